"""Reductions shared by every loss: a mean over the rows that count.

A *row* is one example for (N, C) inputs and one token for (N, T, C) inputs. Every loss
in distill returns the mean of a per-row value over the rows its mask selects, so that a
loss never changes scale with batch size, sequence length or gradient-accumulation steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


def upcast(x: Tensor) -> Tensor:
    """Half-precision inputs are computed in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape "
            f"{tuple(teacher.shape)}; the two must match (use a projector for features, "
            "or check that both models predict the same classes/vocabulary)"
        )


def check_mask(mask: Tensor | None, row_shape: torch.Size, what: str) -> None:
    if mask is not None and mask.shape != row_shape:
        raise ValueError(
            f"{what}: mask shape {tuple(mask.shape)} must equal the row shape "
            f"{tuple(row_shape)} (one entry per example, or per token for (N, T, C) inputs)"
        )


def masked_mean(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_row`` over the entries where ``mask`` is true (all entries if None).

    A mask with no true entry gives 0 (a sum over nothing), not NaN.
    """
    if mask is None:
        return per_row.mean() if per_row.numel() else per_row.sum()
    weights = mask.to(per_row.dtype)
    return (per_row * weights).sum() / weights.sum().clamp_min(1.0)


def select_rows(x: Tensor, mask: Tensor | None, row_dims: int) -> Tensor:
    """Flatten the first ``row_dims`` dimensions into rows and keep the masked ones."""
    rows = x.reshape(-1, *x.shape[row_dims:])
    if mask is None:
        return rows
    return rows[mask.reshape(-1).bool()]
