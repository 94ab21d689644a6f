"""Mixup and CutMix of a training batch, for function matching (Beyer et al., CVPR 2022,
"Knowledge distillation: A good teacher is patient and consistent"): teacher and student
see the same mixed input, so the student matches the teacher's function on inputs between
and across the training images, not only on the images themselves.

    mixup   x = λ x_i + (1 − λ) x_π(i)                     (Zhang et al., ICLR 2018)
    cutmix  x = x_i with a box of x_π(i) pasted in,        (Yun et al., ICCV 2019)
            λ = 1 − the box's share of the input

with λ ~ Beta(α, α) per batch and π a random permutation of the batch. Labels become class
probabilities λ onehot(y_i) + (1 − λ) onehot(y_π(i)); a row mixed with an unlabelled one
(-100, a transfer-set row) gets none (all zeros), and cross-entropy leaves it out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from distill.batch import IGNORE_INDEX, Batch

MixKind = Literal["mixup", "cutmix"]


def soft_labels(labels: Tensor, classes: int) -> Tensor:
    """(N,) class ids (-100: none) as (N, classes) probabilities (all zeros: none)."""
    known = labels != IGNORE_INDEX
    return F.one_hot(labels.clamp(min=0), classes).float() * known.unsqueeze(-1)


def cut_box(shape: torch.Size, lam: float, rng: np.random.Generator) -> tuple[slice, ...]:
    """A box over the spatial dimensions of inputs (C, *spatial) covering about 1 − λ of
    them: each side is the dimension times (1 − λ)^(1/d), centred at random and clipped."""
    spatial = shape[1:]
    ratio = (1 - lam) ** (1 / len(spatial))
    box = []
    for size in spatial:
        length = round(size * ratio)
        centre = int(rng.integers(size))
        low, high = max(0, centre - length // 2), min(size, centre + length - length // 2)
        box.append(slice(low, high))
    return (slice(None), *box)


@dataclasses.dataclass
class BatchMix:
    """A batch transform (``Distiller(batch_transform=...)``) that mixes each training
    micro-batch with a permutation of itself, with probability ``prob``. Draws come from a
    generator seeded by (``seed``, step, micro-batch), so a resumed run mixes as the
    uninterrupted one did, and the same recipe mixes its label-only and distilled students'
    batches alike."""

    kind: MixKind
    classes: int
    alpha: float = 1.0
    prob: float = 1.0
    seed: int = 0
    _step: int = dataclasses.field(default=-1, init=False, repr=False)  # the micro-batch
    _index: int = dataclasses.field(default=0, init=False, repr=False)  # within the step

    def __call__(self, batch: Batch, step: int) -> Batch:
        if step != self._step:
            self._step, self._index = step, 0
        rng = np.random.default_rng([self.seed, step, self._index])
        self._index += 1
        if batch.labels is None or not batch.args or batch.labels.dim() != 1:
            raise ValueError("data.mix mixes (inputs, class labels) batches of a classifier")
        if rng.random() >= self.prob:
            return batch
        lam = float(rng.beta(self.alpha, self.alpha))
        inputs = batch.args[0]
        order = torch.from_numpy(rng.permutation(inputs.shape[0])).to(inputs.device)
        if self.kind == "mixup":
            mixed = lam * inputs + (1 - lam) * inputs[order]
        else:
            box = cut_box(inputs.shape[1:], lam, rng)
            mixed = inputs.clone()
            mixed[(slice(None), *box)] = inputs[order][(slice(None), *box)]
            covered = math.prod(s.stop - s.start for s in box[1:])
            lam = 1 - covered / math.prod(inputs.shape[2:])
        targets = soft_labels(batch.labels, self.classes)
        both = (batch.labels != IGNORE_INDEX) & (batch.labels[order] != IGNORE_INDEX)
        labels = (lam * targets + (1 - lam) * targets[order]) * both.unsqueeze(-1)
        return dataclasses.replace(batch, args=(mixed, *batch.args[1:]), labels=labels)
