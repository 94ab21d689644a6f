"""``distill doctor``: the five checks on a classification or CLIP recipe (or a finished
run), or a kind of run's own checks (``Diagnosable.own_checks``: a language model's).
A CLIP teacher is examined through its zero-shot class logits (the class prompts at
its logit scale), which is what its students are measured on.

The teacher is trained or reused from the teacher cache as ``distill run`` would; the
student is the recipe's architecture at its initial weights. Samples: up to ``sample``
inputs of the transfer set (what the distilled student learns from) and of the test split
(labelled and never seen by the teacher: calibration, and a stand-in for deployment data).
Writes ``doctor.json``, ``doctor.md`` and plots into the run directory; ``distill run``
then puts the doctor's section into ``report.md``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from distill import teachers
from distill.batch import as_batch
from distill.doctor.checks import (
    Finding,
    capacity_gap_check,
    overconfidence_check,
    teacher_cost_check,
    temperature_check,
    verdict_rank,
)
from distill.doctor.plots import plot_findings, plot_sweep
from distill.doctor.shift import data_shift_check
from distill.errors import RecipeError
from distill.models.lora import with_lora
from distill.objective import Objective
from distill.recipes import Recipe, build_objective
from distill.runs.driver import train_student
from distill.runs.fitting import Budget, steps_per_epoch
from distill.runs.report.document import write_report
from distill.runs.report.page import plots_wanted
from distill.runs.table import named_with, task_for
from distill.runs.task import Diagnosable, Lesson, Task, TransferSet, loader
from distill.teachers.kinds import TeacherKind
from distill.training import Distiller

DOCTOR_JSON = "doctor.json"
DOCTOR_MD = "doctor.md"
Log = Callable[[str], None]
SWEEP_TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def kd_temperature(recipe: Recipe) -> float:
    """The temperature of the recipe's first logit-distillation term (1 when it has none)."""
    for term in recipe.objective.values():
        if isinstance(term.temperature, (int, float)):
            return float(term.temperature)
    return 1.0


def _sample(dataset: Dataset, count: int, seed: int) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if n <= count:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    return Subset(dataset, order.tolist())


@torch.no_grad()
def teacher_answers(
    teacher: torch.nn.Module, dataset: Dataset, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, labels, teacher logits) over ``dataset``; batches may carry domains."""
    live = teachers.Module(teacher)
    inputs, labels, logits = [], [], []
    for raw in DataLoader(dataset, batch_size=batch_size):
        batch = as_batch(raw)
        inputs.append(batch.args[0])
        labels.append(batch.labels)
        logits.append(live(batch).logits.float())
    return torch.cat(inputs), torch.cat(labels), torch.cat(logits)


def diagnose(
    recipe: Recipe,
    out_dir: Path | None = None,
    *,
    sweep: bool = False,
    sample: int = 2000,
    probe_steps: int = 300,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Run the checks of the recipe's task (classification and CLIP: the five, and with
    ``sweep`` a short temperature sweep; language models: their task's own checks); write the
    results to ``out_dir`` (default ``<output.dir>/<name>``) and return them."""
    task = task_for(recipe)
    if not isinstance(task, Diagnosable):
        raise RecipeError(
            f"task {recipe.task}: distill doctor checks {named_with(Diagnosable)} recipes"
        )
    own_kind = task.checks == "own"
    if recipe.teacher is None or recipe.teacher.kind is TeacherKind.EMA:
        raise RecipeError("distill doctor examines a teacher: the recipe names none")
    if sweep and own_kind:
        raise RecipeError("--sweep: the temperature sweep is for classification and clip recipes")
    out_dir = Path(out_dir) if out_dir is not None else recipe.output.dir / recipe.name
    sweep_result = None
    own = task.own_checks(sample, progress, log)
    if own is not None:
        findings, notes = own
    else:
        findings, notes, sweep_result = classic_findings(
            task, sweep=sweep, sample=sample, probe_steps=probe_steps, progress=progress, log=log
        )
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed check leaves no folder
    plots = {}
    if plots_wanted():
        plots = (
            task.plot_checks(findings, out_dir) if own_kind else plot_findings(findings, out_dir)
        )
        if sweep_result is not None:
            plots["sweep"] = plot_sweep(sweep_result, out_dir)
    result = {
        "recipe": recipe.name,
        "out_dir": str(out_dir),
        "verdict": verdict_rank(findings),
        "notes": notes,
        "findings": [asdict(f) for f in findings],
        "sweep": sweep_result,
        "plots": {k: str(v.relative_to(out_dir)) for k, v in plots.items()},
    }
    (out_dir / DOCTOR_JSON).write_text(json.dumps(result, indent=2))
    (out_dir / DOCTOR_MD).write_text(markdown_section(result))
    _refresh_report(out_dir)
    return result


def classic_findings(
    task: Task, *, sweep: bool, sample: int, probe_steps: int, progress: bool, log: Log
) -> tuple[list[Finding], list[str], dict[str, Any] | None]:
    """The five checks of a classifier's recipe (``Diagnosable.checks``: ``classifier``),
    with the sweep when asked."""
    assert isinstance(task, Diagnosable)
    recipe = task.recipe
    data = task.prepare(progress, log)
    task.preflight()
    teacher, _ = task.teacher(progress, log)
    teacher.eval()
    if isinstance(task, TransferSet):
        task.transfer_set(teacher, progress, log)
    made = task.data
    recipe = task.objectives().recipe
    notes = []
    if made is not data:  # data-free or PATE: the student's inputs were made just now
        kind = (
            "public inputs of the PATE student"
            if getattr(recipe, "pate", None)
            else "synthetic inputs"
        )
        notes.append(
            f"The checks read the student's {len(made.student_train):,} {kind} "  # type: ignore[arg-type]
            "(the data-shift check compares them with the test inputs)"
        )
        log(notes[-1])
    data = made
    for note in task.doctor_notes(teacher):
        notes.append(note)
        log(note)
    torch.manual_seed(recipe.seed)
    # with student.peft's adapters: the probe and the timing train what the run will train
    student = with_lora(task.build_student(recipe.student, teacher), recipe.student)
    temperature = kd_temperature(recipe)

    log(f"doctor: teacher outputs on up to {sample:,} transfer and test inputs")
    transfer_x, _, transfer_logits = teacher_answers(
        teacher, _sample(data.student_train, sample, 1)
    )
    # the test split: labelled, and never seen by the teacher (the validation split may have
    # been in its training data); it also stands in for the deployment data
    _, test_y, test_logits = teacher_answers(teacher, _sample(data.test, sample, 3))
    probe_x, probe_logits = transfer_x[:512], transfer_logits[:512]

    findings: list[Finding] = [temperature_check(transfer_logits, temperature)]
    findings.append(overconfidence_check(test_logits, test_y))
    log(f"doctor: capacity probe, {probe_steps} steps of the student on the teacher")
    findings.append(capacity_gap_check(teacher, student, probe_x, probe_logits, steps=probe_steps))
    findings.append(data_shift_check(transfer_logits, test_logits))
    epochs = recipe.train.epochs or max(
        1, math.ceil((recipe.train.max_steps or 1) / steps_per_epoch(data.student_train, recipe))
    )
    findings.append(
        teacher_cost_check(
            teacher,
            student,
            transfer_x[: recipe.data.batch_size],  # type: ignore[union-attr]
            steps_per_epoch=steps_per_epoch(data.student_train, recipe),
            epochs=epochs,
            cacheable=not (
                getattr(recipe.data, "augment", False) or getattr(recipe.data, "mix", None)
            ),
        )
    )
    sweep_result = None
    if sweep:
        sweep_result = temperature_sweep(task, recipe, teacher, progress=progress, log=log)
        findings[0] = _with_sweep(findings[0], sweep_result)
    return findings, notes, sweep_result


def temperature_sweep(
    task: Task,
    recipe: Recipe,
    teacher: torch.nn.Module,
    *,
    temperatures: tuple[float, ...] = SWEEP_TEMPERATURES,
    steps: int = 300,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Short distillation runs of ``task``'s student (``steps`` each, the objective of
    ``recipe``, the one the students follow, with every temperature set to T) scored on
    the validation split."""
    accuracy = {}
    for t in temperatures:
        log(f"doctor: temperature sweep, T = {t:g}, {steps} steps")
        terms = {
            name: term.model_copy(update={"temperature": t})
            if term.temperature is not None
            else term
            for name, term in recipe.objective.items()
        }
        objective: Objective = build_objective(terms, steps)
        with tempfile.TemporaryDirectory() as run_dir:
            student, _ = train_student(
                task,
                recipe,
                Lesson(lambda s, o=objective: o, teacher),
                Path(run_dir),
                Budget(steps, steps, progress, log=lambda line: None),
            )
        metrics = Distiller(student, progress=False).evaluate(loader(task.data.val, recipe, False))
        accuracy[str(t)] = metrics["accuracy"]
    best = max(accuracy, key=accuracy.get)  # type: ignore[arg-type]
    return {"steps": steps, "val_accuracy": accuracy, "best": float(best)}


def _with_sweep(finding: Finding, sweep: dict[str, Any]) -> Finding:
    scores = ", ".join(f"T={t}: {100 * a:.1f}%" for t, a in sweep["val_accuracy"].items())
    finding.measurements["sweep"] = sweep
    finding.summary += f"; sweep ({sweep['steps']} steps each, validation accuracy) {scores}"
    finding.suggestion = f"the sweep prefers T = {sweep['best']:g}; " + finding.suggestion
    return finding


ICONS = {"ok": "ok", "warning": "WARNING", "problem": "PROBLEM"}
TITLES = {
    "temperature": "Temperature",
    "overconfidence": "Teacher overconfidence",
    "capacity_gap": "Capacity gap",
    "data_shift": "Data shift",
    "teacher_cost": "Teacher cost",
    "vocabulary": "Vocabulary",
    "chat_template": "Chat template and stop tokens",
    "truncation": "Sequence length",
    "top_k_mass": "Top-k mass",
    "sampling_temperature": "Sampling vs loss temperature",
    "teacher_mode": "Teacher mode",
    "accumulation": "Gradient accumulation",
}


def title(check: str) -> str:
    """A check's name as a heading: the known ones', or a kind of run's own in words."""
    return TITLES.get(check) or check.replace("_", " ").capitalize()


def markdown_section(result: dict[str, Any]) -> str:
    """The doctor's section of the report."""
    lines = ["## Doctor", "", f"Overall: **{ICONS[result['verdict']]}**.", ""]
    lines += [*(f"{note}." for note in result.get("notes", [])), ""] if result.get("notes") else []
    lines += ["| check | verdict | what was measured | suggestion |", "| --- | --- | --- | --- |"]
    for f in result["findings"]:
        lines.append(
            f"| {title(f['check'])} | {ICONS[f['verdict']]} | {f['summary']} | {f['suggestion']} |"
        )
    lines.append("")
    for name, path in result["plots"].items():
        lines += [f"![{name}]({path})", ""]
    return "\n".join(lines)


def _refresh_report(run_dir: Path) -> None:
    """Rewrite the run's report (if the run has one) so it shows the doctor's section."""
    summary = run_dir / "summary.json"
    if summary.exists():
        write_report(run_dir, json.loads(summary.read_text()))
