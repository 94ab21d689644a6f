"""A search proxy that needs no labels: ``search.holdout`` inputs of the student's training
rows are kept out of every trial, and at a trial's end its agreement with the teacher on
them is measured (``heldout_kl_to_teacher``: KL(teacher ‖ student) at T = 1, and
``heldout_teacher_agreement``: top-1 agreement). A transfer set has far more such inputs
than a labelled validation split has rows, so the score is less noisy
(``benchmarks/search_proxy.py`` measures how well each proxy ranks students).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

HELD_OUT = ("heldout_kl_to_teacher", "heldout_teacher_agreement")
SEED = 0  # which rows are held out: the same for every trial and every search


class Unlabelled(Dataset):
    """``rows`` without their labels: tuples keep their first item, dicts lose ``labels``."""

    def __init__(self, rows: Dataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        row = self.rows[index]
        if isinstance(row, dict):
            return {k: v for k, v in row.items() if k != "labels"}
        return (row[0],) if isinstance(row, tuple | list) else row


def split_holdout(rows: Dataset, count: int) -> tuple[Dataset, Dataset | None]:
    """(the rows trials train on, the ``count`` held-out inputs without labels, or None
    when ``count`` is 0); too many rows to hold out is a ``ValueError``."""
    if not count:
        return rows, None
    total = len(rows)  # type: ignore[arg-type]
    if count >= total:
        raise ValueError(
            f"search.holdout {count:,} leaves no training rows (the student has {total:,}); "
            "lower it"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SEED)).tolist()
    return Subset(rows, order[count:]), Unlabelled(Subset(rows, order[:count]))


def held_out_metrics(evaluate: Any, loader: Any) -> dict[str, float]:
    """``evaluate(loader)`` (a distiller's, with its teacher) as the held-out metrics."""
    measured = evaluate(loader)
    return {
        "heldout_kl_to_teacher": measured["kl_to_teacher"],
        "heldout_teacher_agreement": measured["teacher_agreement"],
    }
