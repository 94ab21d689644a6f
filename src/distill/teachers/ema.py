"""Self-distillation from an exponential moving average of the student (BYOL, DINO).

The teacher starts as a copy of the student and, after every optimizer step, moves
towards it: ``θ_t ← m θ_t + (1 − m) θ_s``. The momentum follows a cosine from
``momentum`` to ``final_momentum`` over training (Grill et al. 2020, BYOL; Caron et al.
2021, DINO use 0.996 → 1):

    m(k) = 1 − (1 − m_0) · (cos(π k / K) + 1) / 2

Buffers (e.g. BatchNorm statistics) are copied from the student. The teacher never
receives gradients; the engine calls ``after_step`` once per optimizer step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn

from distill.batch import Batch
from distill.outputs import TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.module import Module


def ema_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """The cosine momentum schedule: ``start`` at step 0, ``end`` at ``total_steps``."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


class EMA(Teacher):
    """A teacher that is the moving average of ``student`` (see the module docstring)."""

    def __init__(
        self,
        student: nn.Module,
        momentum: float = 0.996,
        final_momentum: float = 1.0,
        taps: Iterable[str] = (),
    ) -> None:
        if not 0 <= momentum <= final_momentum <= 1:
            raise ValueError(
                "need 0 <= momentum <= final_momentum <= 1, got "
                f"momentum={momentum}, final_momentum={final_momentum}"
            )
        self.student = student
        self.momentum, self.final_momentum = momentum, final_momentum
        self.current_momentum = momentum
        self.inner = Module(copy.deepcopy(student), taps)

    @property
    def model(self) -> nn.Module:
        return self.inner.model

    @property
    def state_module(self) -> nn.Module:
        """What checkpoints save and resume restores: the averaged weights."""
        return self.inner.model

    def add_taps(self, paths: Iterable[str]) -> None:
        self.inner.add_taps(paths)

    def to(self, device: torch.device | str) -> EMA:
        self.inner.to(device)
        return self

    def compile(self, **options: object) -> None:
        self.inner.compile(**options)

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        return self.inner(batch, logits)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Move the teacher towards the student with the scheduled momentum."""
        m = ema_momentum(step, total_steps, self.momentum, self.final_momentum)
        self.current_momentum = m
        student = dict(self.student.named_parameters())
        for name, param in self.model.named_parameters():
            param.mul_(m).add_(student[name].detach().to(param.dtype), alpha=1 - m)
        student_buffers = dict(self.student.named_buffers())
        for name, buffer in self.model.named_buffers():
            buffer.copy_(student_buffers[name])
