"""Pruning while distilling: engine callbacks that raise a student's sparsity along a
schedule (``GradualPruning``) or keep an earlier stage's zeros at zero (``KeepZeros``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from distill.compress.prune import cubic_sparsity, magnitude_prune
from distill.training.callbacks import Callback


class GradualPruning(Callback):
    """A ``Distiller`` callback that prunes the student to ``final`` global sparsity along
    the cubic schedule, every ``every`` optimizer steps, reaching it after ``end`` (a share)
    of the run's steps; the masks keep pruned weights at zero in between. It runs on every
    process, so all replicas prune alike."""

    all_ranks = True

    def __init__(
        self, final: float, every: int = 10, end: float = 0.75, skip: Iterable[str] = ()
    ) -> None:
        if not 0 < final < 1:
            raise ValueError(f"final sparsity must be in (0, 1), got {final}")
        if not 0 < end <= 1:
            raise ValueError(f"end must be a share of the run in (0, 1], got {end}")
        self.final, self.every, self.end, self.skip = final, every, end, tuple(skip)
        self.history: list[tuple[int, float]] = []

    def on_step_end(self, distiller: Any, step: int, logs: dict[str, float]) -> None:
        last = max(1, round(self.end * distiller.total_steps))
        if step > last or (step % self.every and step != last):
            return
        target = cubic_sparsity(step, last, self.final)
        self.history.append((step, magnitude_prune(distiller.model, target, self.skip)))


class KeepZeros(Callback):
    """Keeps pruned weights at zero while a later stage trains: after every optimizer
    step, each masked parameter is multiplied by its mask (on every process)."""

    all_ranks = True

    def __init__(self, masks: dict[str, Tensor]) -> None:
        self.masks = masks

    @torch.no_grad()
    def on_step_end(self, distiller: Any, step: int, logs: dict[str, float]) -> None:
        model = distiller.model
        for name, mask in self.masks.items():
            parameter = model.get_parameter(name)
            parameter.mul_(mask.to(parameter.device, parameter.dtype))


def zero_masks(model: nn.Module) -> dict[str, Tensor]:
    """For every weight with zeros, the mask of its nonzero entries."""
    return {
        name: (p != 0)
        for name, p in model.named_parameters()
        if name.endswith("weight") and bool((p == 0).any())
    }
