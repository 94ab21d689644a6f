"""What flows between data, teachers and losses: the label that is ignored, a teacher's
answer for one batch (``TeacherOutput``) and a sparse top-k teacher distribution (``TopK``,
what a top-k teacher cache stores)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# a label that counts in no loss: unlabelled transfer rows, prompt and padding tokens
IGNORE_INDEX = -100


@dataclass
class TopK:
    """A sparse teacher distribution per row: ``ids`` (..., k) int, ``logprobs`` (..., k)
    and ``tail`` (...) the log of the mass outside the ids, at ``temperature``."""

    ids: Tensor
    logprobs: Tensor
    tail: Tensor
    temperature: float = 1.0

    def select(self, rows: Tensor) -> TopK:
        """The rows ``rows`` (an index or a boolean mask over the flattened rows)."""
        k = self.ids.shape[-1]
        return TopK(
            self.ids.reshape(-1, k)[rows],
            self.logprobs.reshape(-1, k)[rows],
            self.tail.reshape(-1)[rows],
            self.temperature,
        )

    def to(self, device: torch.device | str) -> TopK:
        return TopK(
            self.ids.to(device), self.logprobs.to(device), self.tail.to(device), self.temperature
        )


def topk_of(logits: Tensor, k: int, temperature: float = 1.0) -> TopK:
    """The top-k of ``softmax(logits / T)`` and its exact tail, as a cache stores them."""
    log_p = F.log_softmax(_float(logits) / temperature, dim=-1)
    logprobs, ids = log_p.topk(min(k, log_p.shape[-1]), dim=-1)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
    return TopK(ids, logprobs, tail, temperature)


def _float(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class TeacherOutput:
    """A teacher's answer for one batch: its logits (or, from a top-k teacher cache, its
    sparse top-k log-probabilities ``topk``) and the features its taps captured."""

    logits: Tensor | None
    features: dict[str, Tensor] = field(default_factory=dict)
    topk: TopK | None = None
    alignment: Any = None  # another tokenizer's rows: losses.cross_tokenizer.Alignment
