"""How a diffusion run measures a sampler: the *domain classifier* (a zoo CNN trained on
the real images, kept in the teacher store), its accuracy on the generated images and FID on
its features against the real test images, CPU seconds per image; and the sample grids."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from distill.measure import frechet_distance
from distill.methods.diffusion import Denoiser
from distill.models import build_model
from distill.recipes import Recipe, TeacherSpec, TrainSpec
from distill.runs.store import fit_and_store_teacher, reuse_or_train
from distill.runs.task import loader
from distill.runs.tasks.diffusion.data import DiffusionData, spec_of
from distill.runs.workdir import Log
from distill.taps import Taps


def classifier(recipe: Recipe, data: DiffusionData, progress: bool, log: Log) -> nn.Module:
    """The domain classifier: a zoo CNN trained on the real training images (kept in the
    teacher store, like a teacher), whose features FID compares."""
    spec = spec_of(recipe)
    scorer = TeacherSpec(
        model="zoo:cnn",
        args=spec.classifier,
        train=TrainSpec(epochs=spec.classifier_epochs, lr=2e-3),
    )
    as_classifier = recipe.model_copy(update={"teacher": scorer})  # its own store entry
    build = lambda: build_model("zoo:cnn", data.num_classes, data.in_shape, spec.classifier)  # noqa: E731

    def train() -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(recipe.seed)
        model = build()
        log(f"training the domain classifier (zoo:cnn) on {len(data.student_train):,} real images")  # type: ignore[arg-type]
        held_out = Subset(data.real_test, range(min(1000, len(data.real_test))))  # type: ignore[arg-type]
        info = fit_and_store_teacher(
            as_classifier,
            model,
            loader(data.student_train, recipe, True),
            loader(held_out, recipe, False),
            progress,
            log,
        )
        return model.eval(), info

    return reuse_or_train(as_classifier, build, train, log)[0]


@dataclass
class Scorer:
    """The domain classifier and its features of the real test images (FID's reference)."""

    model: nn.Module
    reference: Tensor


@torch.no_grad()
def scored(model: nn.Module, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(features at ``fc1``, logits) of the domain classifier."""
    features, logits = [], []
    with Taps(model.eval(), ["fc1"]) as taps:
        for chunk in images.split(batch_size):
            logits.append(model(chunk))
            features.append(taps.pop()["fc1"].flatten(1))
    return torch.cat(features), torch.cat(logits)


@torch.no_grad()
def measure_sampler(
    model: Denoiser, data: DiffusionData, recipe: Recipe, scorer: Scorer, steps: int
) -> dict[str, float]:
    """``steps``-step samples of ``model`` (``diffusion.samples``, classes in turn, fixed
    noise): the domain classifier's accuracy on them, FID on its features against the
    real test images, CPU seconds per image."""
    count, size = spec_of(recipe).samples, recipe.data.eval_batch_size
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(count, *data.in_shape, generator=generator)
    classes = torch.arange(count) % data.num_classes
    started = time.perf_counter()
    images = torch.cat(
        [
            model.eval().sample(z, c, steps, generator).clamp(-1, 1)
            for z, c in zip(noise.split(size), classes.split(size), strict=True)
        ]
    )
    seconds = (time.perf_counter() - started) / count
    features, logits = scored(scorer.model, images)
    return {
        "sampler_steps": float(steps),
        "accuracy": float((logits.argmax(1) == classes).float().mean()),
        "fid": frechet_distance(features, scorer.reference),
        "seconds_per_image": seconds,
        "examples": float(count),
    }


GRID_WIDTH = 900  # pixels at least: a grid of 32-pixel images is readable on a page


def image_grid(images: Tensor, columns: int, path: Path) -> Path:
    """``images`` (N, C, H, W) in [-1, 1] as one PNG, ``columns`` per row, each pixel
    repeated (nearest neighbour) so that the grid is at least ``GRID_WIDTH`` wide."""
    from PIL import Image

    n, channels, height, width = images.shape
    rows = -(-n // columns)
    grid = torch.full((channels, rows * (height + 2), columns * (width + 2)), -1.0)
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + 2) + 1, (i % columns) * (width + 2) + 1
        grid[:, top : top + height, left : left + width] = image
    scale = max(1, -(-GRID_WIDTH // grid.shape[-1]))
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return path
