"""CLIP-style training: the contrastive loss with CLIP's learned logit scale.

``LearnedScaleContrastive`` is ``losses.clip_contrastive`` with its scale a parameter
``t`` (the scale is ``exp(t)``, capped at 100, initialised at 1 / 0.07, as in CLIP), for
training an image tower against a frozen text tower; after training, ``scale`` is the
teacher's logit scale that the distillation losses use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from distill.losses.clip import clip_contrastive


class LearnedScaleContrastive(nn.Module):
    """``clip_contrastive`` at a learned logit scale (a loss with state: the objective
    trains its parameter with the model's and keeps it in checkpoints)."""

    def __init__(self, initial_scale: float = 1 / 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial_scale)))
        self.max_scale = max_scale

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp().clamp(max=self.max_scale))

    def forward(self, student_features: Tensor, text: Tensor) -> Tensor:
        return clip_contrastive(
            student_features, text, logit_scale=self.log_scale.exp().clamp(max=self.max_scale)
        )
