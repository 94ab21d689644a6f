"""What every kind of run shares: the run directory's names, the ``Task`` interface, data
loaders and step budgets, the teacher store (a teacher trained for a recipe, kept by a
digest of everything that shapes it), fitting a student with the recipe's settings, and
writing the summary."""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill import teachers
from distill.batch import Batch
from distill.cache import Layout
from distill.losses import cross_entropy
from distill.measure import cpu_latency, parameter_count, size_on_disk
from distill.objective import Objective, Term
from distill.recipes import ModelSpec, Recipe, build_objective
from distill.runs.report import write_report
from distill.runs.store import settings
from distill.training import Callback, Distiller
from distill.training.distributed import num_processes, on_main

RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
BASELINE_DIR = "baseline"
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}

Log = Callable[[str], None]


@dataclass
class Splits:
    """The rows of a run: what the distilled and the label-only students train on, the
    validation rows that select each model, the test rows it is measured on."""

    student_train: Dataset
    baseline_train: Dataset
    val: Dataset
    test: Dataset
    regime: str  # one line for the log and the report: what data, how many labels


class Task(ABC):
    """One kind of run (classification, language modelling, ...): how it prepares its data,
    builds and measures its models, and what its cache and summary hold. The driver
    (``runs.run``) does everything else the same way for every task.

    ``diagnosable``: ``distill doctor`` has checks for it; ``generates``: ``distill
    generate`` can make its teacher write a dataset; ``exports``: ``distill export`` turns
    its students into checked ONNX graphs; ``cache_holds_test``: its teacher
    cache holds the test rows too, so students are measured against the cache they
    learned from (a top-k cache would only bound the KL, so language models are measured
    against the live teacher)."""

    name: str = ""
    samples = False  # distill sample draws images from its runs (``sample``)
    diagnosable = False
    generates = False
    exports = False
    cache_holds_test = False
    cache_example = "cache: {}"  # the cache section to suggest when a recipe lacks one

    @abstractmethod
    def prepare(self, recipe: Recipe, progress: bool, log: Log) -> Splits:
        raise NotImplementedError

    def preflight(self, recipe: Recipe, data: Splits) -> None:  # noqa: B027
        """Build what is cheap to build (the models, the objective) and check that it fits
        the data before anything trains, so a bad recipe fails in seconds, naming the field.
        No random draws: the run that follows is the same as without it."""

    @abstractmethod
    def teacher(
        self, recipe: Recipe, data: Splits, progress: bool, log: Log
    ) -> tuple[nn.Module, dict[str, Any]]:
        """The recipe's teacher: loaded, reused from the teacher store, or trained."""
        raise NotImplementedError

    @abstractmethod
    def train_teacher(self, recipe: Recipe, data: Splits, progress: bool, log: Log) -> dict:
        """``distill teacher``: train (or fine-tune) the teacher and keep it in the store."""
        raise NotImplementedError

    def resolve_recipe(self, recipe: Recipe, data: Splits) -> Recipe:
        """The recipe the students follow once the teacher is known: a task may fill in
        what its objective's terms leave out (a CLIP teacher's logit scale); as given by
        default."""
        return recipe

    def transfer_set(
        self, recipe: Recipe, data: Splits, teacher: nn.Module, progress: bool, log: Log
    ) -> Splits:
        """The splits once the teacher is known: a task may make the distilled student's
        rows from it (synthetic inputs, a private ensemble's answers); as given by default."""
        return data

    def live_teacher(self, recipe: Recipe, data: Splits, model: nn.Module) -> teachers.Teacher:
        """The teacher a student learns from live: ``model`` frozen, under the recipe's
        autocast; a task may wrap it (a language model with another tokenizer)."""
        return teacher_module(recipe, model)

    def baseline_objective(self, recipe: Recipe, data: Splits) -> Objective:
        """What the label-only student (and a ``recover: labels`` stage) learns from:
        cross-entropy on the labels by default."""
        return Objective(ce=Term(cross_entropy))

    @abstractmethod
    def build_student(
        self, recipe: Recipe, data: Splits, spec: ModelSpec, teacher: nn.Module | None
    ) -> nn.Module:
        raise NotImplementedError

    def sample(self, run_dir: Path, recipe: Recipe, **options: Any) -> dict[str, Any]:
        """``distill sample``: draw from a run's generative model (tasks with ``samples``)."""
        raise NotImplementedError(f"task {self.name} does not sample")

    def chain_stages(self, recipe: Recipe) -> list[tuple[str, ModelSpec | None, str]]:
        """The students distilled before the final one, each the next one's teacher: (run
        folder, student spec or None for the recipe's, description)."""
        return chain_stages(recipe)

    def stage_lesson(
        self, recipe: Recipe, data: Splits, teacher: nn.Module | None, stage: str, per_epoch: int
    ) -> Lesson | None:
        """What the student of ``stage`` (a chain stage's folder, or ``"student"``) learns
        from ``teacher``, when the task decides it (None: the recipe's objective)."""
        return None

    def load_student(self, run_dir: Path, recipe: Recipe, data: Splits) -> nn.Module:
        """The distilled student a run saved in ``run_dir`` (for ``eval`` and ``export``)."""
        raise NotImplementedError(f"task {self.name}: loading a run's student is not built")

    def batch_transform(
        self, recipe: Recipe, data: Splits, student: nn.Module
    ) -> Callable[[Batch, int], Batch] | None:
        """A rewrite of the distilled student's training batches (on-policy answers)."""
        return None

    def input_mix(self, recipe: Recipe, data: Splits) -> Callable[[Batch, int], Batch] | None:
        """A rewrite of every student's training batches (``data.mix``), label-only too."""
        return None

    def evaluate(
        self, model: nn.Module, recipe: Recipe, data: Splits, judge: teachers.Teacher | None
    ) -> dict[str, Any]:
        """Test-split metrics of ``model``, with KL and agreement to ``judge`` if given."""
        return Distiller(model, judge, progress=False).evaluate(loader(data.test, recipe, False))

    def describe(
        self, model: nn.Module, recipe: Recipe, data: Splits, weights: Path | None = None
    ) -> dict[str, Any]:
        """What a deployment reads besides latency: parameters, bytes on disk."""
        return {"parameters": parameter_count(model), "size_bytes": size_on_disk(model, weights)}

    @abstractmethod
    def latency_input(self, model: nn.Module, data: Splits) -> tuple[Tensor, dict[str, Any]]:
        """One test input for a batch-1 latency measurement, and the forward's keywords."""
        raise NotImplementedError

    def measure(
        self,
        model: nn.Module,
        recipe: Recipe,
        data: Splits,
        judge: teachers.Teacher | None = None,
        weights: Path | None = None,
    ) -> dict[str, Any]:
        """Test metrics and size (latency: see ``LatencyBench``)."""
        return {
            **self.evaluate(model, recipe, data, judge),
            **self.describe(model, recipe, data, weights),
        }

    def save_student(self, student: nn.Module, run_dir: Path, data: Splits) -> list[str]:
        """Any format besides ``student.safetensors`` (a Hugging Face folder, say); the
        files written, relative to ``run_dir`` (their checksums go into finished.json);
        none by default."""
        return []

    def cache_model(self, teacher: nn.Module) -> nn.Module:
        """The module whose outputs the teacher cache stores: the teacher by default."""
        return teacher

    def cached_teacher(self, answers: teachers.Cached, data: Splits) -> teachers.Teacher:
        """The teacher a distilled student reads from the cache: its answers as stored by
        default."""
        return answers

    @abstractmethod
    def cache_rows(self, data: Splits) -> Dataset:
        """The rows the teacher-output cache holds (example ids unique among them)."""
        raise NotImplementedError

    @abstractmethod
    def cache_layout(self, recipe: Recipe, data: Splits, teacher: nn.Module, rows: int) -> Layout:
        raise NotImplementedError

    @abstractmethod
    def cache_fingerprint(self, recipe: Recipe, data: Splits) -> dict[str, Any]:
        """What the cached answers depend on besides the inputs (which reads check by
        digest): a run reading the cache must agree on all of it."""
        raise NotImplementedError

    @abstractmethod
    def summary_fields(
        self, recipe: Recipe, data: Splits, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Task-specific summary entries: (those before ``regime``, those after the gain)."""
        raise NotImplementedError

    @abstractmethod
    def evaluate_run(self, run_dir: Path, recipe: Recipe) -> dict[str, float]:
        """``distill eval``: the saved student of ``run_dir`` on the test split."""
        raise NotImplementedError

    @abstractmethod
    def describe_eval(self, metrics: dict[str, float]) -> str:
        raise NotImplementedError

    @abstractmethod
    def describe_teacher(self, info: dict[str, Any]) -> str:
        raise NotImplementedError


class LatencyBench:
    """The models a report times. Each is added when the run has it and all are timed back
    to back at the end of the run (``cpu_latency``: warm-up, repeats, median and the 10th
    to 90th percentile), so no row is measured while the machine was busier than for
    another. Without a bench (``None``), ``latency`` times a model at once."""

    def __init__(self, task: Task, data: Splits, repeats: int) -> None:
        self.task, self.data, self.repeats = task, data, repeats
        self.models: dict[str, nn.Module] = {}

    def add(self, row: str, model: nn.Module) -> None:
        self.models[row] = model

    def measure(self, rows: dict[str, dict[str, Any]]) -> None:
        """Time every model added, one after another, into its row."""
        for row, model in self.models.items():
            if row in rows:
                example, kwargs = self.task.latency_input(model, self.data)
                rows[row].update(cpu_latency(model, example, self.repeats, **kwargs))


def latency(
    task: Task, recipe: Recipe, data: Splits, model: nn.Module, bench: LatencyBench | None, row: str
) -> dict[str, float]:
    """``model``'s latency for report row ``row``: left to ``bench`` (filled in at the end of
    the run), or, without one, measured now."""
    if bench is not None:
        bench.add(row, model)
        return {}
    example, kwargs = task.latency_input(model, data)
    return cpu_latency(model, example, recipe.output.latency_repeats, **kwargs)


# -- data and budgets -------------------------------------------------------------------------


def loader(dataset: Dataset, recipe: Recipe, train: bool) -> DataLoader:
    spec = recipe.data
    return DataLoader(
        dataset,
        batch_size=spec.batch_size if train else spec.eval_batch_size,
        shuffle=train,
        num_workers=spec.num_workers,
    )


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


# -- students ---------------------------------------------------------------------------------


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


@dataclass
class Lesson:
    """What one student learns from: ``objective(student)``; the live ``teacher`` model
    (the recipe's, or the stage before), or instead a teacher cache's ``answers`` or the
    student's own moving average (``ema_momentum``); its ``rows`` (``"student"``: the
    distilled student's, ``"baseline"``: the labelled ones); whether the task may rewrite
    its batches (``on_policy``: the student writes the answers)."""

    objective: Callable[[nn.Module], Objective]
    teacher: nn.Module | None = None
    answers: teachers.Teacher | None = None
    ema_momentum: float | None = None
    rows: Literal["student", "baseline"] = "student"
    on_policy: bool = False
    transform: Callable[[Batch, int], Batch] | None = None  # the task's for this stage
    answers_for: Callable[[nn.Module], teachers.Teacher] | None = None  # built on the student


def recipe_objective(
    recipe: Recipe, per_epoch: int, teacher: nn.Module | None, sparse_teacher: bool = False
) -> Callable[[nn.Module], Objective]:
    """The recipe's objective for a student (LM-head terms read both models' heads)."""
    compile = recipe.train.compile and recipe.train.compile_backend
    return lambda student: build_objective(
        recipe.objective, per_epoch, student, teacher, sparse_teacher, compile
    )


def chain_stages(recipe: Recipe) -> list[tuple[str, ModelSpec | None, str]]:
    """(run folder, student spec or None for the recipe's, description) of the students
    distilled before the final one: the teacher assistant, then born-again generations."""
    stages: list[tuple[str, ModelSpec | None, str]] = []
    if recipe.assistant is not None:
        stages.append(
            ("assistant", recipe.assistant, f"teacher assistant {recipe.assistant.model}")
        )
    stages += [
        (f"generation_{g}", None, f"born-again generation {g} of {recipe.generations}")
        for g in range(1, recipe.generations)
    ]
    return stages


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
    resume: bool = True,
    log: Log = print,
    **changes: Any,
) -> tuple[Distiller, Any, float]:
    """Train ``student`` with the recipe's settings (``changes`` override some), from
    the last checkpoint in ``run_dir`` if an earlier run was stopped there (``resume``);
    a checkpoint at every validation unless ``train.checkpoint_every`` says otherwise.
    Returns (distiller, fit result, seconds)."""
    every = recipe.train.eval_every or eval_every
    run = Distiller(
        student,
        teacher,
        objective,
        callbacks=callbacks,
        batch_transform=batch_transform,
        log=log,
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


def check_run_dir(run_dir: Path) -> None:
    """Refuse a folder that ``distill run`` did not write."""
    if not (Path(run_dir) / RECIPE_FILE).exists():
        raise FileNotFoundError(f"{run_dir} is not a distill run directory (no {RECIPE_FILE})")


# -- summary ----------------------------------------------------------------------------------


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
