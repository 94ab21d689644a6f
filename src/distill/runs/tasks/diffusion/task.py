"""``task: diffusion``: progressive distillation of a DDIM sampler (Salimans & Ho, 2022).

- **Data**: an image dataset mapped to [-1, 1] and padded (or resized) to
  ``diffusion.image_size``; validation rows noised once (their ``loss`` is the denoising
  error).
- **Teacher**: ``hf-diffusers:<id or folder>`` (a UNet with its scheduler), or
  ``diffusers:unet2d`` built from ``teacher.args`` and trained by the recipe on the
  denoising loss (v or ε prediction, DDPM's linear schedule, classes dropped for
  guidance), kept in the teacher store. Either becomes a ``Denoiser`` that samples in
  ``diffusion.steps`` DDIM steps.
- **Rounds**: chain stages ``round_<n>`` then the ``student``: each student starts as a
  copy of its teacher and learns, on the levels of its own n-step grid, the target of two
  teacher steps (``TwoStepTeacher``, ``progressive_distillation``); guidance is baked
  into the first round when ``diffusion.guidance`` > 0.
- **Metrics**: each sampler generates ``diffusion.samples`` images, class by class: the
  class accuracy of a CNN trained on the real images (the *domain classifier*), FID on
  that classifier's features against the real test images (FID with a domain classifier,
  not Inception-FID), and CPU seconds per image; the teacher row also measures its own
  DDIM at each student's step count (not distilled).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import RecipeError
from distill.losses import denoising
from distill.methods.diffusion import (
    ConsistencyTeacher,
    Denoiser,
    Noising,
    TwoStepTeacher,
)
from distill.models.diffusion import prompt_embeddings, unet_from_config
from distill.objective import Objective, Term
from distill.recipes import ModelSpec, Recipe
from distill.runs.fitting import recipe_objective
from distill.runs.report.tables import SummaryLayout, register_layout
from distill.runs.store import fit_and_store_teacher, reuse_or_train, train_again
from distill.runs.task import (
    Lesson,
    LessonPerStage,
    Objectives,
    Samples,
    SavesStudent,
    Task,
    loader,
)
from distill.runs.tasks.diffusion.data import DiffusionData, hub_teacher, prepare_data, spec_of
from distill.runs.tasks.diffusion.report import GRID, terminal_table, write_diffusion_report
from distill.runs.tasks.diffusion.scoring import (
    Scorer,
    classifier,
    image_grid,
    measure_sampler,
    scored,
)
from distill.runs.workdir import Log, load_finished
from distill.teachers import EMA
from distill.training import checkpoint as ckpt


def denoiser(recipe: Recipe, data: DiffusionData, spec: ModelSpec) -> Denoiser:
    """The teacher ``spec`` names as a ``Denoiser`` sampling in ``diffusion.steps`` steps."""
    settings = spec_of(recipe)
    conditioning = None
    if spec.model.startswith("hf-diffusers:"):
        unet = copy.deepcopy(hub_teacher(spec.model)[0])
        classes = getattr(unet.config, "num_class_embeds", None)
        null = data.num_classes if classes == data.num_classes + 1 else None
        if type(unet).__name__ == "UNet2DConditionModel":  # classes as prompts
            prompts = [settings.prompt.format(name=name) for name in data.class_names] + [""]
            conditioning, null = prompt_embeddings(spec.model, prompts), data.num_classes
    elif spec.model == "diffusers:unet2d":
        channels, size = data.in_shape[0], data.in_shape[-1]
        fields = {
            "sample_size": size,
            "in_channels": channels,
            "out_channels": channels,
            "num_class_embeds": data.num_classes + 1,
            **spec.args,
        }
        unet, null = unet_from_config(fields), data.num_classes
    else:
        raise RecipeError(
            f"teacher.model {spec.model}: a diffusion teacher is hf-diffusers:<id or folder> or "
            "diffusers:unet2d (with args: UNet2DModel config fields, and train)"
        )
    try:
        model = Denoiser(
            unet,
            data.levels,
            data.prediction,
            null,
            steps=settings.steps,
            conditioning=conditioning,
        )
    except ValueError as error:
        raise RecipeError(f"teacher.model {spec.model}: {error}") from None
    if spec.checkpoint is not None:
        ckpt.load_weights(model, spec.checkpoint)
    return model


def get_teacher(
    recipe: Recipe, data: DiffusionData, progress: bool, log: Log
) -> tuple[nn.Module, dict]:
    spec = recipe.teacher
    assert spec is not None
    if spec.train is None:
        log(f"teacher {spec.model}: loaded, not trained")
        return denoiser(recipe, data, spec).eval(), {"model": spec.model, "train_seconds": 0.0}
    return reuse_or_train(
        recipe,
        lambda: denoiser(recipe, data, spec),
        lambda: train_teacher(recipe, data, progress, log),
        log,
    )


def train_teacher(
    recipe: Recipe, data: DiffusionData, progress: bool, log: Log
) -> tuple[nn.Module, dict]:
    """The denoising loss on every training image, at levels drawn uniformly; classes
    dropped for guidance at ``diffusion.class_dropout``."""
    spec, settings = recipe.teacher, spec_of(recipe)
    assert spec is not None
    torch.manual_seed(recipe.seed)
    model = denoiser(recipe, data, spec)
    noising = Noising(
        data.levels, null_class=model.null_class, drop=settings.class_dropout, seed=recipe.seed
    )
    log(f"training the teacher {spec.model} on {len(data.student_train):,} images")  # type: ignore[arg-type]
    info = fit_and_store_teacher(
        recipe,
        model,
        loader(data.student_train, recipe, True),
        loader(data.val, recipe, False),
        progress,
        log,
        objective=Objective(denoise=Term(denoising)),
        batch_transform=noising,
        select_metric="loss",
    )
    return model.eval(), info


def compared_steps(recipe: Recipe) -> list[int]:
    """The step counts the teacher's own DDIM is measured at, to compare with the
    students': each round's, or for a consistency model 4, 2 and 1."""
    if spec_of(recipe).method == "consistency":
        return [n for n in (4, 2, 1) if n < spec_of(recipe).steps]
    return round_steps(recipe)


def round_steps(recipe: Recipe) -> list[int]:
    """The students' step counts, round by round: steps / 2, steps / 4, …, to_steps."""
    spec, found = spec_of(recipe), []
    steps = spec.steps
    while steps > spec.to_steps:
        steps //= 2
        found.append(steps)
    return found


class Diffusion(Task, LessonPerStage, Samples, SavesStudent):
    """``task: diffusion``. It keeps the teacher it sampled with and the domain classifier
    that scores every sampler (``scorer``, built with the teacher or on first use)."""

    name = "diffusion"
    data: DiffusionData

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        self.teacher_model: nn.Module | None = None
        self._scorer: Scorer | None = None

    def sample(
        self,
        run_dir: Path,
        *,
        model: str = "student",
        steps: int | None = None,
        count: int = 64,
        seed: int = 0,
        out: Path | None = None,
    ) -> dict[str, Any]:
        """``count`` images of ``model`` (``student``, a round folder such as ``round_8``,
        or ``teacher``) in ``steps`` DDIM steps (default: its own), one class per column,
        from noise seeded by ``seed``; written as a PNG grid (default
        ``<run_dir>/samples_<model>_<steps>.png``)."""
        data = self.prepare(False, lambda line: None)
        if model == "teacher":
            sampler = get_teacher(self.recipe, data, False, lambda line: None)[0]
        elif model == "student" or (run_dir / model / ckpt.STUDENT_FILE).exists():
            sampler = self.load_student(run_dir / ("" if model == "student" else model))
        else:
            raise RecipeError(f"{run_dir}: no model {model!r} (student, teacher or a round_<n>)")
        assert isinstance(sampler, Denoiser)
        steps = steps or int(sampler.sampler_steps)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(count, *data.in_shape, generator=generator)
        classes = torch.arange(count) % data.num_classes
        started = time.perf_counter()
        images = sampler.eval().sample(noise, classes, steps, generator)
        seconds = time.perf_counter() - started
        path = out or run_dir / f"samples_{model}_{steps}.png"
        image_grid(images, min(count, data.num_classes), path)
        return {
            "path": str(path),
            "model": model,
            "steps": steps,
            "images": count,
            "seconds_per_image": seconds / count,
        }

    def prepare(self, progress: bool, log: Log) -> DiffusionData:
        self.data = prepare_data(self.recipe, log)
        return self.data

    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        model, info = get_teacher(self.recipe, self.data, progress, log)
        self.scorer(progress, log)
        self.teacher_model = model
        return model, info

    def scorer(self, progress: bool = False, log: Log = lambda line: None) -> Scorer:
        """The domain classifier (trained, or reused from the teacher store) and its
        features of the real test images."""
        if self._scorer is None:
            data = self.data
            model = classifier(self.recipe, data, progress, log)
            real = torch.stack([data.real_test[i][0] for i in range(len(data.real_test))])
            self._scorer = Scorer(model, scored(model, real)[0])
        return self._scorer

    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        recipe = self.recipe
        return train_again(recipe, lambda: train_teacher(recipe, self.data, progress, log), log)

    def chain_stages(self) -> list[tuple[str, ModelSpec | None, str]]:
        if spec_of(self.recipe).method == "consistency":
            return []  # one consistency model
        steps = round_steps(self.recipe)
        return [
            (f"round_{n}", None, f"progressive distillation {2 * n} → {n} steps")
            for n in steps[:-1]
        ]

    def stage_lesson(self, teacher: nn.Module | None, stage: str, per_epoch: int) -> Lesson:
        """Two steps of ``teacher``'s sampler for one of its student's (the first round's
        teacher samples with ``diffusion.guidance``); or, for a consistency model, one
        teacher step on its grid and the student's moving average there."""
        assert isinstance(teacher, Denoiser)
        recipe, data = self.recipe, self.data
        spec = spec_of(recipe)
        steps = int(teacher.sampler_steps) // 2
        guide = teacher
        if int(teacher.sampler_steps) == spec.steps and spec.guidance:
            guide = copy.copy(teacher)  # the same weights, sampled with guidance
            guide.guidance = spec.guidance
        if spec.method == "consistency":
            return Lesson(
                recipe_objective(recipe, per_epoch, teacher),
                teacher,
                answers_for=lambda student: ConsistencyTeacher(
                    guide, EMA(student, momentum=spec.ema_momentum), data.levels, spec.steps
                ),
                transform=Noising(data.levels, spec.steps, seed=recipe.seed, weighting="x_space"),
            )
        return Lesson(
            recipe_objective(recipe, per_epoch, teacher),
            teacher,
            answers=TwoStepTeacher(guide, data.levels, steps),
            transform=Noising(data.levels, steps, seed=recipe.seed + steps),
        )

    def objectives(self) -> Objectives:
        """Rounds keep their last step (the paper's fixed schedule) unless the recipe names
        a validation metric."""
        objectives = super().objectives()
        recipe = self.recipe
        if "select_metric" in recipe.train.model_fields_set:
            return objectives
        train = recipe.train.model_copy(update={"select_metric": None})
        return Objectives(recipe.model_copy(update={"train": train}), objectives.baseline)

    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        """A copy of its teacher that samples in half the steps (a consistency model: in
        one step of its own sampler)."""
        assert isinstance(teacher, Denoiser)
        student = copy.deepcopy(teacher).requires_grad_(True).train()
        student.sampler_steps.fill_(int(teacher.sampler_steps) // 2)
        student.guidance = 0.0
        if spec_of(self.recipe).method == "consistency":
            student.sampler = "consistency"
            student.sampler_steps.fill_(1)
        return student

    def save_student(self, student: nn.Module, run_dir: Path) -> list[str]:
        """A grid of its samples (two per class) next to its weights, for the report."""
        assert isinstance(student, Denoiser)
        data = self.data
        count = 2 * data.num_classes
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(count, *data.in_shape, generator=generator)
        classes = torch.arange(count) % data.num_classes
        images = student.eval().sample(noise, classes, generator=generator)
        image_grid(images, data.num_classes, run_dir / GRID)
        return []  # the grid is a picture for the report, not a format of the weights

    def load_student(self, run_dir: Path) -> nn.Module:
        recipe = self.recipe
        assert recipe.teacher is not None
        model = denoiser(recipe, self.data, recipe.teacher.model_copy(update={"checkpoint": None}))
        load_finished(model, run_dir)
        if spec_of(recipe).method == "consistency":
            model.sampler = "consistency"
        return model.eval()

    def evaluate(self, model: nn.Module, judge: Any = None) -> dict[str, Any]:
        """The sampler at its own step count; the teacher also at each student's (DDIM,
        not distilled)."""
        assert isinstance(model, Denoiser)
        recipe, data, scorer = self.recipe, self.data, self.scorer()
        metrics = measure_sampler(model, data, recipe, scorer, int(model.sampler_steps))
        if model is self.teacher_model:
            metrics["ddim"] = {
                str(n): measure_sampler(model, data, recipe, scorer, n)
                for n in compared_steps(recipe)
            }
        elif model.sampler == "consistency":  # multistep consistency sampling
            metrics["multistep"] = {
                str(n): measure_sampler(model, data, recipe, scorer, n) for n in (2, 4)
            }
        return metrics

    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        """One denoiser evaluation (a sampler makes ``steps`` of them per image)."""
        z = torch.zeros(self.data.in_shape)
        return z, {
            "tau": torch.tensor([float(self.data.levels.steps)]),
            "class_labels": torch.tensor([0]),
        }

    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec = spec_of(self.recipe)
        rounds = [spec.steps, *round_steps(self.recipe)] if spec.method == "progressive" else []
        before = {
            "task": "diffusion",
            "dataset": self.recipe.data.dataset,
            "method": spec.method,
            "rounds": rounds,
        }
        return before, {}

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"{int(metrics['sampler_steps'])}-step sampler: FID (domain classifier) "
            f"{metrics['fid']:.2f}, "
            f"class accuracy {100 * metrics['accuracy']:.1f}%, "
            f"{metrics['seconds_per_image'] * 1000:.1f} ms per image"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"validation denoising loss {info['val']['loss']:.4f}"


register_layout(
    Diffusion.name,
    SummaryLayout(write_report=write_diffusion_report, terminal_table=terminal_table),
)
