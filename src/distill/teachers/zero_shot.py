"""A CLIP-style teacher answered from a cache of its image embeddings."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.batch import Batch
from distill.outputs import TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.cached import Cached


class ZeroShotAnswers(Teacher):
    """A CLIP teacher read from its cache of image embeddings: the features at ``tap`` (the
    image encoder's path in the live model) are the cached embeddings, and the logits are
    its zero-shot logits ``scale · norm(embedding) · norm(prompts)ᵀ``, as the live
    ``ZeroShotClassifier`` gives them."""

    def __init__(self, embeddings: Cached, prompts: Tensor, scale: float, tap: str) -> None:
        self.embeddings, self.tap = embeddings, tap
        self.prompts, self.scale = F.normalize(prompts.float(), dim=-1), scale

    def add_taps(self, paths: Iterable[str]) -> None:
        self.embeddings.add_taps([p for p in paths if p != self.tap])  # refuses any other

    def to(self, device: torch.device | str) -> ZeroShotAnswers:
        self.embeddings.to(device)
        self.prompts = self.prompts.to(device)
        return self

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        embedded = self.embeddings(batch).logits
        assert embedded is not None  # a dense cache
        image = F.normalize(embedded, dim=-1)
        return TeacherOutput(
            logits=self.scale * image @ self.prompts.T, features={self.tap: embedded}
        )
