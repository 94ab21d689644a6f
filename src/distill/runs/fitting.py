"""Training a student with the recipe's settings, the same way for every kind of run:
step budgets, the frozen teacher under autocast, the objective a recipe's terms build,
the default chain of students (teacher assistant, born-again generations), and the
latency bench that times every model of a report back to back at the end of the run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill import teachers
from distill.batch import Batch
from distill.measure import cpu_latency
from distill.objective import Objective
from distill.recipes import Recipe, build_objective
from distill.runs.store import settings
from distill.runs.task import Task
from distill.runs.workdir import Log
from distill.training import Callback, Distiller
from distill.training.distributed import num_processes

AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def epoch_steps(examples: int, batch_size: int, grad_accum_steps: int) -> int:
    """Optimizer steps per epoch when every process reads ``examples / processes`` of them
    in batches of ``batch_size`` (as the engine's sampler shards them)."""
    per_process = math.ceil(examples / num_processes())
    return math.ceil(math.ceil(per_process / batch_size) / grad_accum_steps)


def steps_per_epoch(dataset: Dataset, recipe: Recipe) -> int:
    """Optimizer steps in one pass over ``dataset``: each process reads its own shard."""
    return epoch_steps(len(dataset), recipe.data.batch_size, recipe.train.grad_accum_steps)  # type: ignore[arg-type]


def step_budget(recipe: Recipe, per_epoch: int) -> int:
    """Every student's optimizer steps: ``train.max_steps``, ``train.epochs`` of the
    distilled student's data, or the smaller of the two when both are set."""
    epochs, max_steps = recipe.train.epochs, recipe.train.max_steps
    budget = max_steps or per_epoch * (epochs or 1)
    return min(budget, per_epoch * epochs) if max_steps and epochs else budget


def teacher_module(recipe: Recipe, model: nn.Module) -> teachers.Module:
    """``model`` as a frozen teacher, run under the recipe's ``teacher.autocast``."""
    assert recipe.teacher is not None
    return teachers.Module(model, autocast_dtype=AUTOCAST[recipe.teacher.autocast])


@dataclass
class Budget:
    """Every student's training: ``steps`` optimizer updates, validation every
    ``per_epoch`` (unless ``train.eval_every`` says otherwise), a progress bar or not,
    where notes go, where the models go to be timed (none: at once)."""

    steps: int
    per_epoch: int
    progress: bool
    log: Log = print
    bench: LatencyBench | None = None


class LatencyBench:
    """The models a report times. Each is added when the run has it and all are timed back
    to back at the end of the run (``cpu_latency``: warm-up, repeats, median and the 10th
    to 90th percentile), so no row is measured while the machine was busier than for
    another. Without a bench (``None``), ``latency`` times a model at once."""

    def __init__(self, task: Task, repeats: int) -> None:
        self.task, self.repeats = task, repeats
        self.models: dict[str, nn.Module] = {}

    def add(self, row: str, model: nn.Module) -> None:
        self.models[row] = model

    def measure(self, rows: dict[str, dict[str, Any]]) -> None:
        """Time every model added, one after another, into its row."""
        for row, model in self.models.items():
            if row in rows:
                example, kwargs = self.task.latency_input(model)
                rows[row].update(cpu_latency(model, example, self.repeats, **kwargs))


def latency(task: Task, model: nn.Module, bench: LatencyBench | None, row: str) -> dict[str, float]:
    """``model``'s latency for report row ``row``: left to ``bench`` (filled in at the end of
    the run), or, without one, measured now."""
    if bench is not None:
        bench.add(row, model)
        return {}
    example, kwargs = task.latency_input(model)
    return cpu_latency(model, example, task.recipe.output.latency_repeats, **kwargs)


def recipe_objective(
    recipe: Recipe, per_epoch: int, teacher: nn.Module | None, sparse_teacher: bool = False
) -> Callable[[nn.Module], Objective]:
    """The recipe's objective for a student (LM-head terms read both models' heads)."""
    compile = recipe.train.compile and recipe.train.compile_backend
    return lambda student: build_objective(
        recipe.objective, per_epoch, student, teacher, sparse_teacher, compile
    )


def fit_student(
    recipe: Recipe,
    student: nn.Module,
    teacher: teachers.Teacher | None,
    objective: Objective,
    *,
    run_dir: Path,
    train_loader: DataLoader,
    val_loader: DataLoader,
    max_steps: int,
    eval_every: int,
    progress: bool,
    callbacks: Sequence[Callback] = (),
    batch_transform: Callable[[Batch, int], Batch] | None = None,
    validation: Callable[[nn.Module], dict[str, float]] | None = None,
    resume: bool = True,
    log: Log = print,
    provenance: dict[str, Any] | None = None,
    **changes: Any,
) -> tuple[Distiller, Any, float]:
    """Train ``student`` with the recipe's settings (``changes`` override some), from
    the last checkpoint in ``run_dir`` if an earlier run was stopped there (``resume``);
    a checkpoint at every validation unless ``train.checkpoint_every`` says otherwise.
    ``validation``: what each validation measures (None: ``Distiller.evaluate`` on
    ``val_loader``); ``provenance``: what every checkpoint records about the lessons'
    sources. Returns (distiller, fit result, seconds)."""
    every = recipe.train.eval_every or eval_every
    run = Distiller(
        student,
        teacher,
        objective,
        callbacks=callbacks,
        batch_transform=batch_transform,
        validation=validation,
        log=log,
        provenance=provenance,
        **settings(
            recipe.train,
            seed=recipe.seed,
            run_dir=run_dir,
            progress=progress,
            eval_every=every,
            checkpoint_every=recipe.train.checkpoint_every or every,
            **changes,
        ),
    )
    started = time.perf_counter()
    result = run.fit(train_loader, val_loader, max_steps=max_steps, resume=resume)
    return run, result, time.perf_counter() - started
