"""Splits of a training set: validation for model selection, labelled and transfer data.

Model selection uses a validation split carved from the *training* data; the test split
is only for the final report. For distillation with few labels (Hinton's transfer set),
``labeled_split`` keeps labels on a few examples and lets the teacher label the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset, random_split

from distill.batch import IGNORE_INDEX
from distill.errors import DataError


def train_val_split(
    dataset: Dataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[Subset, Subset]:
    """Split ``dataset`` into (train, validation) subsets with a seeded permutation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = len(dataset)  # type: ignore[arg-type]
    n_val = max(1, round(n * val_fraction))
    generator = torch.Generator().manual_seed(seed)
    train, val = random_split(dataset, [n - n_val, n_val], generator=generator)
    return train, val


class WithoutLabels(Dataset):
    """The inputs of a dataset whose labels are hidden (set to the ignore index, -100),
    except at ``keep``: a transfer set that only the teacher can label."""

    def __init__(self, dataset: Dataset, keep: set[int] | None = None) -> None:
        self.dataset = dataset
        self.keep = keep or set()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        x, y, *meta = self.dataset[index]
        return (x, int(y) if index in self.keep else IGNORE_INDEX, *meta)


def labeled_split(
    dataset: Dataset, labeled: int, val_fraction: float, seed: int = 0
) -> tuple[Subset, Subset, Dataset]:
    """``labeled`` examples with labels, split into (train, validation), and the transfer
    set: every training input outside the validation split, labelled only where the
    labelled training subset has it.

    The validation examples come out of the labelled budget: with 2,000 labels and
    ``val_fraction=0.1`` the student sees 1,800 labelled training examples and selects
    on 200, as a practitioner with 2,000 labels would.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if not 0 < labeled <= n:
        raise DataError(f"data.labeled must be between 1 and {n} (the training set size)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(labeled * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:labeled]
    transfer_idx = order[n_val:]
    transfer = WithoutLabels(Subset(dataset, transfer_idx), keep=set(range(len(train_idx))))
    return Subset(dataset, train_idx), Subset(dataset, val_idx), transfer
