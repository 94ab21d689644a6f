"""Self-distillation losses without labels: DINO and BYOL, for an EMA teacher.

Both compare the student's output on some views of an input with the teacher's output on
other views. Views are passed as lists of tensors of shape (N, D) (one entry per view, the
same N examples in each), or as one (V, N, D) tensor (``methods.dino.MultiView``'s
output); a single (N, D) tensor is one view. Pairs of the same view are skipped
when both lists hold it (DINO's multi-crop: the teacher sees the global crops, the student
every crop).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.reductions import upcast

Views = Tensor | Sequence[Tensor]


def _views(x: Views) -> list[Tensor]:
    if isinstance(x, Tensor):
        return list(x.unbind(0)) if x.dim() == 3 else [x]
    return list(x)


def _pairs(student: list[Tensor], teacher: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Every (student view, teacher view) pair, except a view with itself: the first
    ``len(teacher)`` student views are taken to be the teacher's views, in order."""
    same = len(student) > 1 or len(teacher) > 1
    return [
        (s, t)
        for i, s in enumerate(student)
        for j, t in enumerate(teacher)
        if not (same and i == j)
    ]


def dino(
    student_logits: Views,
    teacher_logits: Views,
    *,
    center: Tensor | None = None,
    student_temperature: float = 0.1,
    teacher_temperature: float | Tensor = 0.04,
) -> Tensor:
    """DINO: cross-entropy from the teacher's centred, sharpened distribution.

    Formula: ``p_t = softmax((g_t − c) / τ_t)``, ``log p_s = log_softmax(g_s / τ_s)``,
    ``loss = mean over pairs and examples of −Σ_k p_t,k log p_s,k``; ``c`` is a running
    mean of the teacher's outputs (``DINOCenter``; None: no centring). Centering stops one
    dimension from dominating, sharpening (τ_t < τ_s) stops the outputs from becoming
    uniform; together they avoid collapse without labels or negatives.
    Reduction: mean over view pairs and examples. T² scaling: no.
    Paper: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers",
    ICCV 2021.
    """
    students, teachers = _views(student_logits), _views(teacher_logits)
    total, count = 0.0, 0
    for s, t in _pairs(students, teachers):
        centred = upcast(t) if center is None else upcast(t) - center
        target = F.softmax(centred / teacher_temperature, dim=-1).detach()
        log_p = F.log_softmax(upcast(s) / student_temperature, dim=-1)
        total = total + (-(target * log_p).sum(-1)).mean()
        count += 1
    if count == 0:
        raise ValueError("dino needs at least one (student view, teacher view) pair")
    return total / count


class DINOCenter(nn.Module):
    """DINO's loss with its state: the centre ``c ← m c + (1 − m) mean(teacher outputs)``
    is updated after each call (no gradient; the mean over every process's batch) and is a
    buffer, so checkpoints keep it. Use
    it as a term's loss: ``Term(DINOCenter(out_dim), ...)``; it reads ``student_logits``
    and ``teacher_logits``. With ``global_views=G``, logits of shape (V, N, D) are V views
    (``selfsup.MultiView``), and the teacher's first G are its views.

    Teacher temperature warm-up (DINO's, 0.04 → 0.07 over 30 epochs): with
    ``warmup_calls > 0``, τ_t rises linearly from ``teacher_temperature_start`` to
    ``teacher_temperature`` over that many calls (a buffer counts them, so a resumed run
    goes on where it was)."""

    def __init__(
        self,
        dim: int,
        momentum: float = 0.9,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        global_views: int | None = None,
        teacher_temperature_start: float | None = None,
        warmup_calls: int = 0,
    ) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(dim))
        self.momentum = momentum
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.global_views = global_views
        self.warmup = (teacher_temperature_start, warmup_calls)
        if teacher_temperature_start is not None and warmup_calls > 0:
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.__name__ = "dino"

    def temperature(self) -> float | Tensor:
        """τ_t now: after the warm-up (or without one), ``teacher_temperature``; during it
        a tensor on the buffer's device (no wait for the device)."""
        start, length = self.warmup
        if not hasattr(self, "calls"):
            return self.teacher_temperature
        done = (self.calls / length).clamp(max=1.0)  # type: ignore[operator]
        return start + (self.teacher_temperature - start) * done  # type: ignore[operator]

    def _split(self, student: Tensor, teacher: Tensor) -> tuple[Views, Views]:
        if self.global_views is None:
            return student, teacher
        if student.dim() != 3 or teacher.dim() != 3:
            raise ValueError(
                "DINOCenter(global_views=...) reads (views, N, D) logits from a MultiView "
                f"student and teacher; got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        return list(student.unbind(0)), list(teacher[: self.global_views].unbind(0))

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        students, teachers = self._split(student_logits, teacher_logits)
        loss = dino(
            students,
            teachers,
            center=self.center.to(teacher_logits.device),
            student_temperature=self.student_temperature,
            teacher_temperature=self.temperature(),
        )
        self.update(teachers)
        if hasattr(self, "calls"):
            self.calls += 1  # type: ignore[operator]
        return loss

    @torch.no_grad()
    def update(self, teacher_views: Views) -> None:
        """The centre follows the mean teacher output over the batch of every process
        (summed across processes when several train together, as DINO does)."""
        outputs = torch.cat([upcast(t) for t in _views(teacher_views)])
        totals = torch.cat([outputs.sum(0), outputs.new_tensor([len(outputs)])])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        batch_mean = totals[:-1] / totals[-1]
        self.center.mul_(self.momentum).add_((1 - self.momentum) * batch_mean.to(self.center))


def byol(student_logits: Views, teacher_logits: Views) -> Tensor:
    """BYOL: regress the teacher's normalised projection from the student's prediction.

    Formula: ``loss = ‖ q̂_s − ẑ_t ‖² = 2 − 2 cos(q_s, z_t)`` with ``q̂ = q / ‖q‖``; the
    student's views pass through its predictor head before this loss, the teacher (EMA)
    has none.
    Reduction: mean over view pairs and examples. T² scaling: no.
    Paper: Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020.
    """
    students, teachers = _views(student_logits), _views(teacher_logits)
    pairs = _pairs(students, teachers)
    if not pairs:
        raise ValueError("byol needs at least one (student view, teacher view) pair")
    values = [
        (2 - 2 * F.cosine_similarity(upcast(s), upcast(t).detach(), dim=-1)).mean()
        for s, t in pairs
    ]
    return torch.stack(values).mean()
