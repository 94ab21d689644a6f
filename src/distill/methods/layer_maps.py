"""Hidden-state matching between transformer layers.

``layer_map`` pairs student layers with teacher layers; ``hidden_state_terms`` turns the
pairs into objective terms that compare the layers' outputs (captured by taps), with a
learned linear projector when the widths differ (FitNets-style, per pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from distill import losses
from distill.objective import Term
from distill.schedules import Schedule


def layer_map(
    student_layers: int,
    teacher_layers: int,
    kind: Literal["uniform", "last"] | Sequence[tuple[int, int]] = "uniform",
) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs.

    ``uniform``: student layer i (from 0) matches teacher layer ⌈(i + 1)·T/S⌉ − 1 for S
    student and T teacher layers: TinyBERT's g(m) = m·T/S in 1-based layers (Jiao et al.
    2020), rounded up when T/S is not whole, so each student layer learns from the first
    teacher layer at or beyond its relative depth and the last layers meet (4 student / 6
    teacher layers: [1, 2, 4, 5]); ``last``: only the two last layers (MiniLM's choice);
    or explicit pairs, checked against both depths.
    """
    if kind == "uniform":  # ⌈a / b⌉ = −(−a // b), exact in integers
        return [
            (i, -(-(i + 1) * teacher_layers // student_layers) - 1) for i in range(student_layers)
        ]
    if kind == "last":
        return [(student_layers - 1, teacher_layers - 1)]
    if isinstance(kind, str):
        raise ValueError(f"layer_map kind must be 'uniform', 'last' or pairs, got {kind!r}")
    pairs = [(int(s), int(t)) for s, t in kind]
    for s, t in pairs:
        if not (0 <= s < student_layers and 0 <= t < teacher_layers):
            raise ValueError(
                f"layer pair ({s}, {t}) is outside the student's {student_layers} or the "
                f"teacher's {teacher_layers} layers"
            )
    return pairs


def hidden_state_terms(
    pairs: Sequence[tuple[int, int]],
    student_stack: str,
    teacher_stack: str,
    *,
    loss: Literal["mse", "cosine"] = "mse",
    weight: float | Schedule = 1.0,
) -> dict[str, Term]:
    """One term per pair, named ``hidden_<s>_<t>``, reading ``<stack>.<index>`` taps.

    ``student_stack``/``teacher_stack`` are the dotted paths of the layer lists (see
    ``distill.models.shrink.layer_stack``), e.g. ``model.layers``. ``mse`` is the FitNets
    hint with a linear projector when widths differ; ``cosine`` is DistilBERT's L_cos.
    """
    fn = {"mse": losses.hint, "cosine": losses.cosine_embedding}[loss]
    return {
        f"hidden_{s}_{t}": Term(
            fn, weight=weight, student=f"{student_stack}.{s}", teacher=f"{teacher_stack}.{t}"
        )
        for s, t in pairs
    }
