"""Running a recipe, the same way for every kind of run.

``TASKS`` maps a recipe's ``task`` to the ``Task`` that knows its data, models and
metrics; ``run_recipe`` then goes teacher -> label-only baseline -> students (a teacher
assistant, born-again generations, or peers learning from each other) -> teacher cache ->
the distilled student -> compression stages -> summary and report -> export. The
commands ``distill teacher``, ``cache``, ``generate`` and ``eval`` are here too, so the
command line never asks which task a recipe is.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import teachers
from distill.errors import RecipeError
from distill.methods import Cohort, OnPolicy
from distill.methods.token_kd import final_hidden_tap
from distill.models.lora import ADAPTER_DIR, has_adapters, merge_adapters, save_adapter, with_lora
from distill.recipes import ModelSpec, Recipe, validate_recipe
from distill.recipes.load import read_yaml
from distill.runs.cache import cache_as_teacher, ensure_cache
from distill.runs.classify import Classification
from distill.runs.clip import Clip
from distill.runs.common import (
    BASELINE_DIR,
    RECIPE_FILE,
    Budget,
    LatencyBench,
    Lesson,
    Log,
    Splits,
    Task,
    check_run_dir,
    fit_student,
    gain,
    latency,
    loader,
    recipe_objective,
    step_budget,
    steps_per_epoch,
    teacher_module,
    write_summary,
)
from distill.runs.compress import run_compress
from distill.runs.diffusion import Diffusion
from distill.runs.export import export_rows, export_run
from distill.runs.generate import generate_teacher_answers
from distill.runs.language import Language
from distill.runs.store import teacher_cache_dir
from distill.runs.workdir import files_under, finished_row, mark_finished, open_run_dir
from distill.training import checkpoint as ckpt
from distill.training.distributed import num_processes, on_main, process_index

TASKS: dict[str, Task] = {
    "classification": Classification(),
    "causal_lm": Language("causal"),
    "masked_lm": Language("masked"),
    "clip": Clip(),
    "diffusion": Diffusion(),
}


def task_for(recipe: Recipe) -> Task:
    return TASKS[recipe.task]


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
        return run_in(task_for(recipe), recipe, run_dir, progress, log)


def run_in(task: Task, recipe: Recipe, run_dir: Path, progress: bool, log: Log) -> dict[str, Any]:
    """``run_recipe``'s work, in the locked run directory."""
    started = time.perf_counter()
    data = task.prepare(recipe, progress, log)
    log(f"data: {recipe.data.dataset}, {data.regime}")
    task.preflight(recipe, data)
    teacher, teacher_info = None, {}
    if recipe.teacher is not None and recipe.teacher.model != "ema":
        teacher, teacher_info = task.teacher(recipe, data, progress, log)
        data = task.transfer_set(recipe, data, teacher, progress, log)
    recipe = task.resolve_recipe(recipe, data)
    per_epoch = steps_per_epoch(data.student_train, recipe)
    bench = LatencyBench(task, data, recipe.output.latency_repeats)
    budget = Budget(step_budget(recipe, per_epoch), per_epoch, progress, log, bench)
    models: dict[str, dict[str, Any]] = {}
    if teacher is not None:
        seconds = teacher_info.get("train_seconds", 0.0)
        models["teacher"] = {**task.measure(teacher, recipe, data), "train_seconds": seconds}
        if isinstance(teacher, nn.Module):  # not a served teacher, on another machine
            bench.add("teacher", teacher)
    if recipe.baseline:
        log(
            f"label-only student {student_name(recipe.student)}: {budget.steps} steps on "
            f"{len(data.baseline_train):,} labelled examples"  # type: ignore[arg-type]
        )
        labels_only = Lesson(
            lambda s: task.baseline_objective(recipe, data), teacher, rows="baseline"
        )
        _, models["baseline"] = train_student(
            task, recipe, data, labels_only, run_dir / BASELINE_DIR, budget, row="baseline"
        )
    # a teacher assistant, then born-again generations: each stage teaches the next
    teacher_of_student = teacher
    for name, spec, description in task.chain_stages(recipe):
        log(f"{description}: distilled first")
        lesson = task.stage_lesson(recipe, data, teacher_of_student, name, per_epoch) or Lesson(
            recipe_objective(recipe, per_epoch, teacher_of_student), teacher_of_student
        )
        stage, models[name] = train_student(
            task, recipe, data, lesson, run_dir / name, budget, row=name, spec=spec
        )
        teacher_of_student = stage.eval()
    lesson = task.stage_lesson(
        recipe, data, teacher_of_student, "student", per_epoch
    ) or distilled_lesson(task, recipe, data, teacher_of_student, per_epoch, progress, log)
    log(
        f"distilled student {student_name(recipe.student)}"
        + (f" ({recipe.peers} peers learning from each other)" if recipe.peers > 1 else "")
        + f": {budget.steps} steps on {len(data.student_train):,} examples, objective "  # type: ignore[arg-type]
        + ", ".join(recipe.objective)
    )
    student, metrics = train_student(
        task, recipe, data, lesson, run_dir, budget, row="student", peers=recipe.peers
    )
    if "ema_teacher" in metrics:
        models["ema_teacher"] = metrics.pop("ema_teacher")
    if isinstance(student, Cohort):
        models.update(peer_rows(task, student, recipe, data, run_dir, metrics, bench))
    else:
        models["student"] = metrics
    if recipe.compress:  # each stage distils from the recipe's teacher again
        assert teacher is not None  # the recipe checks it
        stages = copy.deepcopy(student)  # the stages change it; the student row is timed later
        models.update(
            run_compress(task, recipe, data, stages, teacher, run_dir, budget, bench, log)
        )
    log(f"timing {len(bench.models)} models back to back on this CPU")
    bench.measure(models)
    summary = summarize(task, recipe, data, models, budget.steps)
    write_summary(run_dir, {**summary, "seconds": time.perf_counter() - started})
    if recipe.export is not None:  # after the summary, so a failed check leaves it readable
        models.update(export_rows(task, recipe, run_dir, models, log))
        write_summary(run_dir, {**summary, "seconds": time.perf_counter() - started})
    return {**summary, "seconds": time.perf_counter() - started}


def student_name(spec: ModelSpec) -> str:
    """A student as the log names it: its model, or, for ``model: teacher``, where it
    comes from (not "student teacher")."""
    return "(cut from the teacher)" if spec.model == "teacher" else spec.model


def distilled_lesson(
    task: Task,
    recipe: Recipe,
    data: Splits,
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
        assert teacher is not None  # the recipe checks it
        info = build_cache(
            task, recipe, data, teacher, worker=process_index(), workers=num_processes(),
            progress=progress, log=log, together=True,
        )  # fmt: skip
        stored = cache_as_teacher(recipe, task.cache_fingerprint(recipe, data))
        answers = task.cached_teacher(stored, data)
        log(f"the distilled student learns from the teacher cache {info['folder']}")
        if stored.layout.kind == "hidden":  # exact: the stored states through the stored head
            heads = stored.head_model()
        else:
            sparse = True
    return Lesson(
        recipe_objective(recipe, per_epoch, heads, sparse_teacher=sparse),
        teacher,
        answers=answers,
        ema_momentum=spec.ema_momentum if spec is not None and spec.model == "ema" else None,
        on_policy=True,
    )


def served(teacher: object) -> bool:
    """A teacher on an inference server: it answers with its top-k, not a model's logits."""
    return isinstance(teacher, teachers.Served)


def summarize(
    task: Task, recipe: Recipe, data: Splits, models: dict[str, dict[str, Any]], steps: int
) -> dict[str, Any]:
    before, after = task.summary_fields(recipe, data, models)
    return {
        "name": recipe.name,
        "description": recipe.description,
        **before,
        "regime": data.regime,
        "teacher_model": recipe.teacher.model if recipe.teacher else None,
        "student_model": recipe.student.model,
        "objective": {name: term.loss for name, term in recipe.objective.items()},
        "steps": steps,
        "models": models,
        "gain_over_baseline": gain(models),
        **after,
    }


def train_student(
    task: Task,
    recipe: Recipe,
    data: Splits,
    lesson: Lesson,
    run_dir: Path,
    budget: Budget,
    *,
    row: str = "student",
    spec: ModelSpec | None = None,
    peers: int = 1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one student (``spec``, default the recipe's; with ``peers`` > 1 a ``Cohort``
    of that many, seeded ``seed``, ``seed + 1``, …) as ``lesson`` says and measure it on
    the test split; an EMA teacher is measured too (``metrics["ema_teacher"]``). A student
    an earlier run finished in ``run_dir`` is reused; one it left unfinished resumes."""
    spec = spec or recipe.student
    torch.manual_seed(recipe.seed)  # the same initial weights for every student
    student = task.build_student(recipe, data, spec, lesson.teacher)
    if peers > 1:
        members = [student]
        for offset in range(1, peers):
            torch.manual_seed(recipe.seed + offset)
            members.append(task.build_student(recipe, data, spec, lesson.teacher))
        student = Cohort(members)
    done = finished_row(run_dir, [ckpt.STUDENT_FILE], budget.log)
    if done is not None:
        ckpt.load_weights(student, run_dir / ckpt.STUDENT_FILE)
        budget.log(f"{run_dir}: finished by an earlier run, reused")
        if not isinstance(student, Cohort):
            done.update(latency(task, recipe, data, student, budget.bench, row))
        return student, done
    student = with_lora(student, spec)  # student.peft: only the adapters train
    objective = lesson.objective(student)
    live = None if lesson.teacher is None else task.live_teacher(recipe, data, lesson.teacher)
    if lesson.ema_momentum is not None:
        live = teachers.EMA(student, momentum=lesson.ema_momentum)
    if lesson.answers_for is not None:  # e.g. a consistency target: the student's average
        lesson = dataclasses.replace(lesson, answers=lesson.answers_for(student))
    judge = lesson.answers if lesson.answers is not None and task.cache_holds_test else live
    transform = lesson.transform
    if transform is None and lesson.on_policy:
        transform = task.batch_transform(recipe, data, student)
    if transform is None:  # function matching: every student's batches mixed alike
        transform = task.input_mix(recipe, data)
    rows = data.baseline_train if lesson.rows == "baseline" else data.student_train
    _, result, seconds = fit_student(
        recipe, student, lesson.answers or live, objective, run_dir=run_dir,
        train_loader=loader(rows, recipe, True), val_loader=loader(data.val, recipe, False),
        max_steps=budget.steps, eval_every=budget.per_epoch, progress=budget.progress,
        batch_transform=transform, log=budget.log,
    )  # fmt: skip
    saved = [ckpt.STUDENT_FILE]  # every file a command may read, checksummed in finished.json
    if has_adapters(student):  # in PEFT's format, then merged: the student as it deploys
        on_main(lambda: save_adapter(student, run_dir / ADAPTER_DIR, spec.model))
        saved += files_under(run_dir, run_dir / ADAPTER_DIR)
        merge_adapters(student)
        on_main(lambda: ckpt.save_weights(student, run_dir / ckpt.STUDENT_FILE))
    saved += on_main(lambda: task.save_student(student, run_dir, data)) or []
    if isinstance(student, Cohort):  # each peer is measured on its own (peer_rows)
        metrics = task.evaluate(student, recipe, data, judge)
    else:
        metrics = task.measure(student, recipe, data, judge, run_dir / ckpt.STUDENT_FILE)
        metrics.update(latency(task, recipe, data, student, budget.bench, row))
    if isinstance(live, teachers.EMA):
        ema = live.model
        metrics["ema_teacher"] = task.measure(ema, recipe, data)
        metrics["ema_teacher"].update(latency(task, recipe, data, ema, budget.bench, "ema_teacher"))
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


def peer_rows(
    task: Task,
    cohort: Cohort,
    recipe: Recipe,
    data: Splits,
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
            **task.evaluate(peer, recipe, data, None),
            "train_seconds": cohort_metrics["train_seconds"],
            "cohort_accuracy": cohort_metrics["accuracy"],
            **task.describe(peer, recipe, data, weights),
            **latency(task, recipe, data, peer, bench, "student" if k == 0 else f"peer_{k}"),
        }
    return rows


# -- the other commands -----------------------------------------------------------------------


def build_cache(
    task: Task,
    recipe: Recipe,
    data: Splits,
    teacher: nn.Module,
    *,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log: Log = print,
    together: bool = False,
) -> dict[str, Any]:
    """The teacher's answers on the task's cache rows (this worker's shards of them)."""
    rows = task.cache_rows(data)
    layout = task.cache_layout(recipe, data, teacher, len(rows))  # type: ignore[arg-type]
    head = None
    if served(teacher):
        live = teacher
    else:
        cached = task.cache_model(teacher).eval().requires_grad_(False)
        live = teacher_module(recipe, cached)  # under the recipe's autocast
        if layout.kind == "hidden":  # its final hidden states, and its LM head once
            live.add_taps([final_hidden_tap(cached)])
            head = cached.get_output_embeddings()
    return ensure_cache(
        recipe, live, rows, layout, worker=worker, workers=workers, progress=progress, log=log,
        together=together, head=head,
    )  # fmt: skip


def cache_command(
    recipe: Recipe, *, worker: int = 0, workers: int = 1, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """``distill cache``: run the teacher (trained or reused) once over the rows students
    read and store its answers (this worker's shards of them)."""
    task = task_for(recipe)
    if recipe.cache is None:
        raise RecipeError(f"cache: the recipe has no cache section; add `{task.cache_example}`")
    data = task.prepare(recipe, progress, log)
    teacher, _ = task.teacher(recipe, data, progress, log)
    return build_cache(
        task, recipe, data, teacher, worker=worker, workers=workers, progress=progress, log=log
    )


def teacher_command(recipe: Recipe, *, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """``distill teacher``: train (or fine-tune) the recipe's teacher and store it; its
    info (validation metrics, seconds) and where it is (``cache``)."""
    if recipe.teacher is None:
        raise RecipeError("teacher: the recipe names no teacher")
    task = task_for(recipe)
    info = task.train_teacher(recipe, task.prepare(recipe, progress, log), progress, log)
    return {**info, "cache": str(teacher_cache_dir(recipe))}


def generate_command(recipe: Recipe, *, progress: bool = True, log: Log = print) -> Path:
    """``distill generate``: the teacher answers the recipe's prompts; returns the dataset."""
    if not task_for(recipe).generates:
        raise RecipeError(f"task {recipe.task}: distill generate is for causal_lm recipes")
    return generate_teacher_answers(recipe, progress=progress, log=log)


def read_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a finished (or interrupted) run wrote."""
    check_run_dir(run_dir)
    path = Path(run_dir) / RECIPE_FILE
    return validate_recipe(read_yaml(path), str(path))


def eval_command(run_dir: Path) -> tuple[dict[str, float], str]:
    """``distill eval``: the run's saved student on its recipe's test split; the metrics
    and a line that says them."""
    recipe = read_run_recipe(run_dir)
    task = task_for(recipe)
    metrics = task.evaluate_run(Path(run_dir), recipe)
    return metrics, task.describe_eval(metrics)


def export_command(run_dir: Path, **options: Any) -> dict[str, Any]:
    """``distill export``: a run's student as ONNX, checked against PyTorch (``options``
    as ``runs.export.export_run``); for the tasks that export."""
    recipe = read_run_recipe(run_dir)
    if not task_for(recipe).exports:
        raise RecipeError(
            f"task {recipe.task}: distill export takes classification and clip runs (LM "
            "export is not built yet)"
        )
    return export_run(Path(run_dir), recipe, task_for(recipe), **options)


def sample_command(run_dir: Path, **options: Any) -> dict[str, Any]:
    """``distill sample``: images from a generative run's model (``Task.sample``)."""
    recipe = read_run_recipe(run_dir)
    task = task_for(recipe)
    if not task.samples:
        raise RecipeError(f"task {recipe.task}: distill sample draws from diffusion runs")
    return task.sample(Path(run_dir), recipe, **options)
