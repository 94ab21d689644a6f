"""``task: classification``: a labelled dataset (a transfer set when only some labels are
kept), teachers from the zoo, torchvision, timm, a run directory, or an ensemble of them,
students measured by test accuracy, size on disk and CPU latency per example. Its data
is in ``data``, its models and teachers in ``models``; students without the original data
(data-free, PATE) come from ``tasks.private``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from distill import teachers
from distill.batch import as_batch, logits_of
from distill.data.mixing import BatchMix
from distill.errors import DistillError, RecipeError
from distill.methods import Cohort
from distill.methods.inversion import batchnorm_layers
from distill.models.hub import save_classifier
from distill.models.lora import with_lora
from distill.objective import Objective
from distill.recipes import ModelSpec, Recipe, build_objective
from distill.runs.stages.cache import DenseAnswers
from distill.runs.store import teacher_fingerprint, train_again
from distill.runs.task import (
    Chained,
    Diagnosable,
    Exportable,
    MixesInputs,
    Peers,
    Pushable,
    Searchable,
    Task,
    TransferSet,
    gap_closed,
)
from distill.runs.tasks.classify.data import Data, prepare_data
from distill.runs.tasks.classify.models import get_teacher, model_from_spec, train_teacher
from distill.runs.tasks.private.transfer import is_private, private_summary, transfer_rows
from distill.runs.workdir import Log
from distill.taps import Taps
from distill.teachers.kinds import TeacherKind


class Classification(
    Task,
    DenseAnswers,
    Exportable,
    Diagnosable,
    Searchable,
    TransferSet,
    MixesInputs,
    Pushable,
    Chained,
    Peers,
):
    """``task: classification``."""

    name = "classification"
    cache_holds_test = True  # its dense logits: exact, usable at any temperature
    pipeline_tag = "image-classification"
    data: Data

    def prepare(self, progress: bool, log: Log) -> Data:
        self.data = prepare_data(self.recipe)
        return self.data

    def chain_stages(self) -> list[tuple[str, ModelSpec | None, str]]:
        """The teacher assistant, then born-again generations."""
        recipe = self.recipe
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

    def peers(self) -> int:
        return self.recipe.peers

    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        return get_teacher(self.recipe, self.data, progress, log)

    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        recipe = self.recipe
        if recipe.pate is not None:  # each partition's teacher has its own store entry
            return get_teacher(recipe, self.data, progress, log)[1]
        return train_again(recipe, lambda: train_teacher(recipe, self.data, progress, log), log)

    def preflight(self) -> None:
        """Every model the recipe names is built (without downloads) and run on two test
        examples: it must give one output per class, and have the modules the objective's
        terms tap."""
        recipe, data = self.recipe, self.data
        objective = build_objective(recipe.objective, 1)
        batch = as_batch(default_collate([data.test[0], data.test[1]]))
        with torch.random.fork_rng():  # no draw from the run's random streams
            for field, spec, taps in named_models(recipe, objective):
                try:
                    model = model_from_spec(spec.model_copy(update={"pretrained": False}), data)
                    model = with_lora(model, spec)  # student.peft's target modules exist
                    if field == "student" and recipe.peers > 1:  # the taps are the cohort's
                        model = Cohort([model, copy.deepcopy(model)])
                    Taps(model, taps)  # an unknown path is an error listing the closest
                    if field == "teacher" and recipe.data.synthetic is not None:  # type: ignore[union-attr]
                        batchnorm_layers(model)  # DeepInversion needs their statistics
                    with torch.no_grad():
                        outputs = logits_of(batch.run(model.eval())).shape[-1]
                except (DistillError, TypeError, RuntimeError, OSError) as error:
                    raise RecipeError(f"{field}.model {spec.model}: {error}") from None
                if outputs != data.num_classes:
                    raise RecipeError(
                        f"{field}.model {spec.model} gives {outputs} outputs per example; "
                        f"the data has {data.num_classes} classes"
                    )

    def transfer_set(self, teacher: nn.Module, progress: bool, log: Log) -> nn.Module | None:
        """Data-free and PATE recipes: the student's rows, made from the teacher."""
        if not is_private(self.recipe):
            return teacher
        build = lambda: self.build_student(self.recipe.student, teacher)  # noqa: E731
        self.data, live = transfer_rows(self.recipe, self.data, teacher, build, progress, log)
        return live

    def student_start(self) -> dict[str, Tensor] | None:
        return self.data.student_start

    def own_average(self) -> float | None:
        pate = self.recipe.pate
        return pate.ema_momentum if pate is not None and pate.unanswered == "mean_teacher" else None

    def input_mix(self) -> BatchMix | None:
        spec = self.recipe.data.mix  # type: ignore[union-attr]
        if spec is None:
            return None
        return BatchMix(
            spec.kind, self.data.num_classes, spec.alpha, spec.prob, seed=self.recipe.seed
        )

    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        return model_from_spec(spec, self.data)

    def load_student(self, run_dir: Path) -> nn.Module:
        return model_from_spec(ModelSpec(model=str(run_dir)), self.data)

    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        example = self.data.test[0]
        routed = isinstance(model, teachers.EnsembleModel) and model.combine == "route"
        # a routed model's latency: the first test example, with its domain
        return example[0], {"domain": torch.tensor([example[2]["domain"]])} if routed else {}

    def cache_fingerprint(self) -> dict[str, Any]:
        return teacher_fingerprint(self.recipe)

    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        recipe = self.recipe
        after = {"gap_closed": gap_closed(models), **private_summary(recipe, self.data)}
        before = {"dataset": recipe.data.dataset, "select_metric": recipe.train.select_metric}
        return before, after

    def hub_student(self, run_dir: Path, folder: Path, log: Log) -> None:
        """The student as a Hugging Face folder: its weights and how to build it."""
        data = self.prepare(False, log)
        student = self.load_student(run_dir)
        spec = self.recipe.student
        save_classifier(
            student, folder, spec.model, dict(spec.args), data.num_classes, data.in_shape
        )

    def hub_usage(self) -> list[str]:
        return [
            "from huggingface_hub import snapshot_download",
            "from distill.models.hub import load_classifier",
            'model = load_classifier(snapshot_download("<this repository>"))',
        ]

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"test accuracy {100 * metrics['accuracy']:.2f}% "
            f"(loss {metrics['loss']:.4f}, {int(metrics['examples']):,} examples)"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"validation accuracy {100 * info['val']['accuracy']:.2f}%"


def named_models(recipe: Recipe, objective: Objective) -> list[tuple[str, ModelSpec, list[str]]]:
    """(field, spec, taps it must have) of every model a run builds from a spec."""
    found = [("student", recipe.student, objective.student_taps)]
    if recipe.assistant is not None:
        found.append(("assistant", recipe.assistant, objective.student_taps))
    spec = recipe.teacher
    if spec is not None and spec.kind is TeacherKind.ENSEMBLE:
        found += [
            (f"teacher.members[{i}]", member, []) for i, member in enumerate(spec.members or [])
        ]
    elif spec is not None and spec.kind is not TeacherKind.EMA:
        found.append(("teacher", spec, objective.teacher_taps))
    return found
