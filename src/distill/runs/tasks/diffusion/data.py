"""A diffusion run's data: images mapped to [-1, 1] and padded (or resized) to
``diffusion.image_size``, the teacher's noise levels, validation rows noised once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from distill.data import train_val_split
from distill.data.captions import CLASS_NAMES
from distill.data.idx import MEAN, STD
from distill.data.vision import CIFAR_STATS
from distill.errors import DistillError, RecipeError
from distill.methods.diffusion import NoisedImages, NoiseLevels
from distill.models.diffusion import default_schedule, load_hf_diffusers
from distill.recipes import Recipe
from distill.runs.task import Splits
from distill.runs.tasks.diffusion.recipe import DiffusionSpec
from distill.runs.workdir import Log

VALIDATION_ROWS = 512  # noised validation images: enough for a steady denoising loss


def unit_range(dataset: str) -> Any:
    """The map from a dataset's normalised tensors back to [-1, 1]."""
    if dataset == "fashion_mnist":
        return lambda x: (x * STD + MEAN) * 2 - 1
    if dataset in CIFAR_STATS:
        mean, std = (torch.tensor(v).view(-1, 1, 1) for v in CIFAR_STATS[dataset])
        return lambda x: (x * std + mean) * 2 - 1
    if dataset in ("image_folder", "hf_images"):
        return lambda x: x
    raise RecipeError(
        f"data.dataset {dataset}: diffusion recipes take images (fashion_mnist, cifar10, "
        "cifar100, image_folder, hf_images)"
    )


class DiffusionImages(Dataset):
    """``(image in [-1, 1] of size × size, label)``: padded with -1 (the background) when
    smaller by an even margin, resized otherwise."""

    def __init__(self, dataset: Dataset, to_unit: Any, size: int) -> None:
        self.dataset, self.to_unit, self.size = dataset, to_unit, size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        x, label = self.dataset[index][:2]
        x = self.to_unit(x).clamp(-1, 1)
        margin = self.size - x.shape[-1]
        if margin == 0 and x.shape[-2] == self.size:
            return x, label
        if margin > 0 and margin % 2 == 0 and x.shape[-2] == x.shape[-1]:
            return F.pad(x, (margin // 2,) * 4, value=-1.0), label
        return F.interpolate(x[None], size=(self.size,) * 2, mode="bilinear")[0], label


@dataclass
class DiffusionData(Splits):
    """A diffusion run's rows, the noise levels, and what samplers are scored against."""

    num_classes: int
    in_shape: tuple[int, ...]
    levels: NoiseLevels
    prediction: str
    real_test: Dataset
    class_names: list[str]  # the prompts of a text-conditional teacher name them


def spec_of(recipe: Recipe) -> DiffusionSpec:
    assert recipe.diffusion is not None  # the recipe checks it
    return recipe.diffusion


@functools.lru_cache(maxsize=2)
def hub_teacher(name: str) -> tuple[nn.Module, Tensor, str]:
    try:
        return load_hf_diffusers(name)
    except DistillError as error:
        raise RecipeError(f"teacher.model: {error}") from None


def schedule(recipe: Recipe) -> tuple[NoiseLevels, str]:
    """The teacher's noise levels and prediction type."""
    assert recipe.teacher is not None
    if recipe.teacher.model.startswith("hf-diffusers:"):
        _, alphas_cumprod, prediction = hub_teacher(recipe.teacher.model)
        return NoiseLevels(alphas_cumprod), prediction
    spec = spec_of(recipe)
    return NoiseLevels(default_schedule(spec.timesteps)), spec.prediction


def prepare_data(recipe: Recipe, log: Log = print) -> DiffusionData:
    spec, data = spec_of(recipe), recipe.data
    train, test, num_classes = data.load()
    names = CLASS_NAMES.get(data.dataset) or getattr(train, "classes", None)
    names = list(names or [f"class {i}" for i in range(num_classes)])
    to_unit = unit_range(data.dataset)
    train, test = (DiffusionImages(d, to_unit, spec.image_size) for d in (train, test))
    levels, prediction = schedule(recipe)
    fit, held_out = train_val_split(train, data.val_fraction, data.split_seed)
    rows = Subset(held_out, range(min(VALIDATION_ROWS, len(held_out))))
    val = NoisedImages(rows, levels, seed=data.split_seed)
    return DiffusionData(
        student_train=fit,
        baseline_train=fit,
        val=val,
        test=val,
        regime=f"{len(fit):,} training images, {spec.image_size}×{spec.image_size}",
        num_classes=num_classes,
        in_shape=tuple(train[0][0].shape),
        levels=levels,
        prediction=prediction,
        real_test=test,
        class_names=[name.lower() for name in names],
    )
