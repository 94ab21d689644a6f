"""Running a recipe, the same way for every kind of run: ``run_recipe`` goes teacher ->
(transfer set) -> label-only baseline -> students (a chain of them: teacher assistant,
born-again generations, or the task's own; or peers learning from each other) -> teacher
cache -> the distilled student -> compression stages -> summary and report -> export.
What differs between kinds of run is the ``Task``'s (``runs.task``); what only some can do,
the driver asks as a capability.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import teachers
from distill.measure import parameter_count, size_on_disk
from distill.methods import Cohort, OnPolicy
from distill.models.lora import ADAPTER_DIR, has_adapters, merge_adapters, save_adapter, with_lora
from distill.recipes import ModelSpec, Recipe
from distill.runs.fitting import (
    Budget,
    LatencyBench,
    fit_student,
    latency,
    recipe_objective,
    step_budget,
    steps_per_epoch,
    teacher_module,
)
from distill.runs.report.document import write_report
from distill.runs.stages.cache import build_teacher_cache, cache_as_teacher
from distill.runs.stages.compress import run_compress
from distill.runs.stages.export import export_rows
from distill.runs.table import task_for
from distill.runs.task import (
    Cacheable,
    Chained,
    Lesson,
    LessonPerStage,
    MixesInputs,
    Peers,
    RewritesBatches,
    SavesStudent,
    Task,
    TransferSet,
    ValidatesOwn,
    WrapsTeacher,
    loader,
)
from distill.runs.workdir import (
    BASELINE_DIR,
    SUMMARY_FILE,
    Log,
    files_under,
    finished_row,
    mark_finished,
    open_run_dir,
)
from distill.teachers.kinds import TeacherKind
from distill.training import checkpoint as ckpt
from distill.training.distributed import num_processes, on_main, process_index


def run_recipe(
    recipe: Recipe,
    *,
    out_dir: Path | None = None,
    progress: bool = True,
    log: Log = print,
    restart: bool = False,
) -> dict[str, Any]:
    """Everything ``distill run`` does; returns the summary it writes to summary.json.

    Rerun into the same directory, it continues where an earlier run stopped: finished
    students are reused, an interrupted one resumes from its last checkpoint. ``restart``
    starts over instead (see ``runs.workdir``)."""
    run_dir = Path(out_dir) if out_dir is not None else recipe.output.dir / recipe.name
    with open_run_dir(recipe, run_dir, restart, log):
        return run_in(task_for(recipe), run_dir, progress, log)


def run_in(task: Task, run_dir: Path, progress: bool, log: Log) -> dict[str, Any]:
    """``run_recipe``'s work, in the locked run directory."""
    started = time.perf_counter()
    recipe = task.recipe
    data = task.prepare(progress, log)
    log(f"data: {recipe.data.dataset}, {data.regime}")
    task.preflight()
    teacher, teacher_info = None, {}
    teacher_of_student = None
    if recipe.teacher is not None and recipe.teacher.kind is not TeacherKind.EMA:
        teacher, teacher_info = task.teacher(progress, log)
        teacher_of_student = teacher
        if isinstance(task, TransferSet):
            teacher_of_student = task.transfer_set(teacher, progress, log)
            data = task.data
    objectives = task.objectives()
    recipe = objectives.recipe
    per_epoch = steps_per_epoch(data.student_train, recipe)
    bench = LatencyBench(task, recipe.output.latency_repeats)
    budget = Budget(step_budget(recipe, per_epoch), per_epoch, progress, log, bench)
    models: dict[str, dict[str, Any]] = {}
    if teacher is not None:
        seconds = teacher_info.get("train_seconds", 0.0)
        models["teacher"] = {**measure(task, teacher), "train_seconds": seconds}
        if isinstance(teacher, nn.Module):  # not a served teacher, on another machine
            bench.add("teacher", teacher)
    if recipe.baseline:
        log(
            f"label-only student {student_name(recipe.student)}: {budget.steps} steps on "
            f"{len(data.baseline_train):,} labelled examples"
        )
        labels_only = Lesson(lambda s: objectives.baseline, teacher, rows="baseline")
        _, models["baseline"] = train_student(
            task, recipe, labels_only, run_dir / BASELINE_DIR, budget, row="baseline"
        )
    # a teacher assistant, then born-again generations (or the task's own chain): each
    # stage teaches the next
    chained = isinstance(task, LessonPerStage)
    for name, spec, description in task.chain_stages() if isinstance(task, Chained) else []:
        log(f"{description}: distilled first")
        lesson = (
            task.stage_lesson(teacher_of_student, name, per_epoch)
            if chained
            else Lesson(recipe_objective(recipe, per_epoch, teacher_of_student), teacher_of_student)
        )
        stage, models[name] = train_student(
            task, recipe, lesson, run_dir / name, budget, row=name, spec=spec
        )
        teacher_of_student = stage.eval()
    if chained:
        lesson = task.stage_lesson(teacher_of_student, "student", per_epoch)
    else:
        lesson = distilled_lesson(task, recipe, teacher_of_student, per_epoch, progress, log)
    peers = task.peers() if isinstance(task, Peers) else 1
    log(
        f"distilled student {student_name(recipe.student)}"
        + (f" ({peers} peers learning from each other)" if peers > 1 else "")
        + f": {budget.steps} steps on {len(data.student_train):,} examples, objective "
        + ", ".join(recipe.objective)
    )
    student, metrics = train_student(
        task, recipe, lesson, run_dir, budget, row="student", peers=peers
    )
    if "ema_teacher" in metrics:
        models["ema_teacher"] = metrics.pop("ema_teacher")
    if isinstance(student, Cohort):
        models.update(peer_rows(task, student, run_dir, metrics, bench))
    else:
        models["student"] = metrics
    if recipe.compress:  # each stage distils from the recipe's teacher again
        assert teacher is not None  # the recipe checks it
        stages = copy.deepcopy(student)  # the stages change it; the student row is timed later
        models.update(
            run_compress(task, recipe, objectives, stages, teacher, run_dir, budget, bench, log)
        )
    log(f"timing {len(bench.models)} models back to back on this CPU")
    bench.measure(models)
    summary = summarize(task, recipe, models, budget.steps)
    write_summary(run_dir, {**summary, "seconds": time.perf_counter() - started})
    if recipe.export is not None:  # after the summary, so a failed check leaves it readable
        models.update(export_rows(task, recipe, run_dir, models, log))
        write_summary(run_dir, {**summary, "seconds": time.perf_counter() - started})
    return {**summary, "seconds": time.perf_counter() - started}


def student_name(spec: ModelSpec) -> str:
    """A student as the log names it: its model, or, for ``model: teacher``, where it
    comes from (not "student teacher")."""
    return "(cut from the teacher)" if spec.copies_teacher else spec.model


def distilled_lesson(
    task: Task,
    recipe: Recipe,
    teacher: nn.Module | None,
    per_epoch: int,
    progress: bool,
    log: Log,
) -> Lesson:
    """The distilled student's lesson: from ``teacher``, from the teacher's cached answers
    (built first if missing), or, with ``teacher.model: ema``, from its moving average."""
    spec = recipe.teacher
    answers = None
    heads, sparse = teacher, served(teacher)  # whose LM head the objective reads; a top-k?
    if recipe.cache is not None and recipe.cache.use:
        assert teacher is not None and isinstance(task, Cacheable)  # the recipe checks it
        info = build_teacher_cache(
            task,
            teacher,
            worker=process_index(),
            workers=num_processes(),
            progress=progress,
            log=log,
            together=True,
        )
        stored = cache_as_teacher(task, teacher)
        answers = task.cached_teacher(stored)
        log(f"the distilled student learns from the teacher cache {info['folder']}")
        if isinstance(stored, teachers.Cached) and stored.layout.kind == "hidden":
            # exact: the stored states through the stored head
            heads = stored.head_model()
        else:
            sparse = True
    ema = spec.ema_momentum if spec is not None and spec.kind is TeacherKind.EMA else None
    if isinstance(task, TransferSet) and task.own_average() is not None:
        ema = task.own_average()  # e.g. PATE's student on the unanswered public inputs
    return Lesson(
        recipe_objective(recipe, per_epoch, heads, sparse_teacher=sparse),
        teacher,
        answers=answers,
        ema_momentum=ema,
        on_policy=True,
        start=task.student_start() if isinstance(task, TransferSet) else None,
    )


def served(teacher: object) -> bool:
    """A teacher on inference servers: it answers with its top-k, not a model's logits."""
    return teachers.is_remote(teacher)


def measure(
    task: Task,
    model: nn.Module,
    judge: teachers.Teacher | None = None,
    weights: Path | None = None,
) -> dict[str, Any]:
    """Test metrics (with KL and agreement to ``judge``) and what a deployment reads
    besides latency (``LatencyBench``): parameters and bytes on disk, unknown here for a
    served teacher (another machine's model)."""
    return {**task.evaluate(model, judge), **size(model, weights)}


def size(model: nn.Module, weights: Path | None = None) -> dict[str, Any]:
    if served(model):
        return {"parameters": None, "size_bytes": None}
    return {"parameters": parameter_count(model), "size_bytes": size_on_disk(model, weights)}


def summarize(
    task: Task, recipe: Recipe, models: dict[str, dict[str, Any]], steps: int
) -> dict[str, Any]:
    before, after = task.summary_fields(models)
    return {
        "name": recipe.name,
        "description": recipe.description,
        **before,
        "regime": task.data.regime,
        "teacher_model": recipe.teacher.model if recipe.teacher else None,
        "student_model": recipe.student.model,
        "objective": {name: term.loss for name, term in recipe.objective.items()},
        "steps": steps,
        "models": models,
        "gain_over_baseline": gain(models),
        **after,
    }


def gain(models: dict[str, dict[str, Any]]) -> float | None:
    """The distilled student's accuracy minus the label-only student's."""
    if "baseline" not in models:
        return None
    return models["student"]["accuracy"] - models["baseline"]["accuracy"]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json and the report, by the main process."""

    def write() -> None:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        write_report(run_dir, summary)

    on_main(write)


def train_student(
    task: Task,
    recipe: Recipe,
    lesson: Lesson,
    run_dir: Path,
    budget: Budget,
    *,
    row: str = "student",
    spec: ModelSpec | None = None,
    peers: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one student (``spec``, default the recipe's; with ``peers`` > 1 a ``Cohort``
    of that many, seeded ``seed``, ``seed + 1``, …) as ``lesson`` says, with ``recipe``'s
    settings, and measure it on the test split; an EMA teacher is measured too
    (``metrics["ema_teacher"]``). A student an earlier run finished in ``run_dir`` is
    reused; one it left unfinished resumes."""
    spec = spec or recipe.student
    torch.manual_seed(recipe.seed)  # the same initial weights for every student
    student = task.build_student(spec, lesson.teacher)
    if lesson.start is not None:  # e.g. the student that learned alongside a generator
        student.load_state_dict(lesson.start)
    if peers > 1:
        members = [student]
        for offset in range(1, peers):
            torch.manual_seed(recipe.seed + offset)
            members.append(task.build_student(spec, lesson.teacher))
        student = Cohort(members)
    done = finished_row(run_dir, [ckpt.STUDENT_FILE], budget.log)
    if done is not None:
        ckpt.load_weights(student, run_dir / ckpt.STUDENT_FILE)
        budget.log(f"{run_dir}: finished by an earlier run, reused")
        if not isinstance(student, Cohort):
            done.update(latency(task, student, budget.bench, row))
        return student, done
    student = with_lora(student, spec)  # student.peft: only the adapters train
    objective = lesson.objective(student)
    live = None if lesson.teacher is None else live_teacher(task, recipe, lesson.teacher)
    if lesson.ema_momentum is not None:
        live = teachers.EMA(student, momentum=lesson.ema_momentum)
    if lesson.answers_for is not None:  # e.g. a consistency target: the student's average
        lesson = dataclasses.replace(lesson, answers=lesson.answers_for(student))
    holds_test = isinstance(task, Cacheable) and task.cache_holds_test
    judge = lesson.answers if lesson.answers is not None and holds_test else live
    transform = lesson.transform
    if transform is None and lesson.on_policy and isinstance(task, RewritesBatches):
        transform = task.batch_transform(student)
    if transform is None and isinstance(task, MixesInputs):  # every student's batches alike
        transform = task.input_mix()
    rows = task.data.baseline_train if lesson.rows == "baseline" else task.data.student_train
    _, result, seconds = fit_student(
        recipe,
        student,
        lesson.answers or live,
        objective,
        run_dir=run_dir,
        train_loader=loader(rows, recipe, True),
        val_loader=loader(task.data.val, recipe, False),
        max_steps=budget.steps,
        eval_every=budget.per_epoch,
        progress=budget.progress,
        batch_transform=transform,
        validation=task.validate if isinstance(task, ValidatesOwn) else None,
        log=budget.log,
        provenance=None if lesson.rows == "baseline" else task.data.provenance,
    )
    saved = [ckpt.STUDENT_FILE]  # every file a command may read, checksummed in finished.json
    if has_adapters(student):  # in PEFT's format, then merged: the student as it deploys
        on_main(lambda: save_adapter(student, run_dir / ADAPTER_DIR, spec.model))
        saved += files_under(run_dir, run_dir / ADAPTER_DIR)
        merge_adapters(student)
        on_main(lambda: ckpt.save_weights(student, run_dir / ckpt.STUDENT_FILE))
    if isinstance(task, SavesStudent):
        saved += on_main(lambda: task.save_student(student, run_dir)) or []
    if isinstance(student, Cohort):  # each peer is measured on its own (peer_rows)
        metrics = task.evaluate(student, judge)
    else:
        metrics = measure(task, student, judge, run_dir / ckpt.STUDENT_FILE)
        metrics.update(latency(task, student, budget.bench, row))
    if isinstance(live, teachers.EMA):
        ema = live.model
        metrics["ema_teacher"] = measure(task, ema)
        metrics["ema_teacher"].update(latency(task, ema, budget.bench, "ema_teacher"))
    if isinstance(transform, OnPolicy):
        metrics["on_policy_batches"] = transform.generated_batches
        metrics["on_policy_tokens"] = transform.generated_tokens
    row = {
        **metrics,
        "train_seconds": seconds,
        "steps": result.steps,
        "best_step": result.best_step,
    }
    on_main(lambda: mark_finished(run_dir, row, saved))
    return student, row


def live_teacher(task: Task, recipe: Recipe, model: nn.Module) -> teachers.Teacher:
    """The teacher a student learns from live: ``model`` frozen, under the recipe's
    autocast, unless the task wraps it (``WrapsTeacher``)."""
    if isinstance(task, WrapsTeacher):
        return task.live_teacher(model)
    return teacher_module(recipe, model)


def peer_rows(
    task: Task,
    cohort: Cohort,
    run_dir: Path,
    cohort_metrics: dict[str, Any],
    bench: LatencyBench | None = None,
) -> dict[str, dict[str, Any]]:
    """Each peer of a mutual-learning cohort measured and saved on its own
    (``peers/peer_<k>.safetensors``); peer 0 is reported as the student."""
    rows: dict[str, dict[str, Any]] = {}
    (run_dir / "peers").mkdir(exist_ok=True)
    for k, peer in enumerate(cohort.peers):
        weights = run_dir / "peers" / f"peer_{k}.safetensors"
        on_main(lambda peer=peer, weights=weights: ckpt.save_weights(peer, weights))
        rows["student" if k == 0 else f"peer_{k}"] = {
            **task.evaluate(peer, None),
            "train_seconds": cohort_metrics["train_seconds"],
            "cohort_accuracy": cohort_metrics["accuracy"],
            **size(peer, weights),
            **latency(task, peer, bench, "student" if k == 0 else f"peer_{k}"),
        }
    return rows
