"""What every teacher returns, and what every teacher is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from distill.batch import Batch
from distill.losses.sparse import TopK


@dataclass
class TeacherOutput:
    """A teacher's answer for one batch: its logits (or, from a top-k teacher cache, its
    sparse top-k log-probabilities ``topk``) and the features its taps captured."""

    logits: Tensor | None
    features: dict[str, Tensor] = field(default_factory=dict)
    topk: TopK | None = None


@runtime_checkable
class Teacher(Protocol):
    """Anything that answers a batch with a ``TeacherOutput`` and never trains."""

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput: ...

    def to(self, device: torch.device) -> Teacher: ...

    def add_taps(self, paths: list[str]) -> None: ...
