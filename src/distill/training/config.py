"""Training settings (``TrainConfig``), the optimizer they name and the LR schedule.

The recipe schema builds on ``TrainConfig`` without importing the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from distill.training.tracking import missing_packages


class TrainConfig(BaseModel):
    """Training settings; every field is validated and named in errors."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="decoupled (AdamW) or L2 (SGD)")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="AdamW, or SGD with Nesterov momentum"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    lr_schedule: Literal["constant", "linear", "cosine", "multistep"] = Field(
        "cosine",
        description="after warm-up: constant, linear or cosine decay to 0 at the last step, "
        "or multistep (lr_milestones, lr_decay)",
    )
    lr_milestones: list[float] = Field(
        default_factory=list, description="multistep: epochs at which the LR is multiplied"
    )
    lr_decay: float = Field(0.1, gt=0, le=1, description="multistep: the factor")
    warmup_steps: int = Field(0, ge=0, description="steps of linear LR warm-up from 0")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="micro-batches per update: the update is that of one batch this many "
        "times larger",
    )
    max_grad_norm: float | None = Field(
        None, gt=0, description="clip the gradient's global norm to this; None: no clipping"
    )
    on_nonfinite: Literal["stop", "skip_step"] = Field(
        "stop",
        description="a non-finite loss or gradient norm: stop the run (the last checkpoint "
        "stays the last good one), or skip that step's update and go on",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Accelerate's mixed-precision training (fp16 with loss scaling)"
    )
    seed: int = Field(
        0, description="set before training (Python API; a recipe's top-level seed replaces it)"
    )
    cpu: bool = Field(False, description="train on the CPU even when a GPU is present")
    compile: bool = Field(
        False,
        description="torch.compile the student and the teacher (and LM-head KD's chunks in "
        "recipes); the first steps compile, a last batch of another size once more",
    )
    compile_backend: str = Field(
        "inductor", description="torch.compile's backend ('aot_eager' needs no C compiler)"
    )
    run_dir: Path | None = Field(None, description="where checkpoints and metrics go")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="the newest this many are kept")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl rows")
    eval_every: int | None = Field(None, ge=1, description="steps; None: after each epoch")
    select_metric: str | None = Field(
        "accuracy", description="validation metric that picks the best student; None: last"
    )
    progress: bool = Field(True, description="a progress bar while training")
    log_with: list[Literal["tensorboard", "wandb", "mlflow", "aim"]] = Field(
        default_factory=list,
        description="experiment trackers (Accelerate's) that get every metrics row: the "
        "losses, each term's weight and temperature, the LR and the validation metrics",
    )

    @field_validator("log_with")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        problems = missing_packages(names)
        if problems:
            raise ValueError("; ".join(problems))
        return names


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, at the configured LR and weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.momentum > 0,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(
    kind: str, warmup: int, total: int, milestones: list[int], decay: float
) -> Callable[[int], float]:
    """The LR multiplier at each step: linear warm-up over ``warmup`` steps, then
    ``constant``, ``linear`` or ``cosine`` decay to 0 at ``total``, or ``multistep``
    (times ``decay`` at each milestone step)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "multistep":
            return decay ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    milestones = [round(epoch * steps_per_epoch) for epoch in config.lr_milestones]
    factor = lr_factor(
        config.lr_schedule, config.warmup_steps, total_steps, milestones, config.lr_decay
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# settings that change what training computes: a checkpoint is resumed only under the same
NOT_RESUMED_ACROSS = (
    "lr",
    "weight_decay",
    "optimizer",
    "momentum",
    "lr_schedule",
    "lr_milestones",
    "lr_decay",
    "warmup_steps",
    "grad_accum_steps",
    "max_grad_norm",
    "mixed_precision",
    "seed",
    "eval_every",
    "select_metric",
)


def training_fingerprint(config: TrainConfig) -> dict[str, object]:
    """What a checkpoint must have been trained under to be resumed: the settings that
    change the computation. (Not the length: a run may be resumed to train longer.)"""
    return config.model_dump(mode="json", include=set(NOT_RESUMED_ACROSS))
