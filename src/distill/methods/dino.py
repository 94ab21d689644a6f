"""Self-distillation without labels through the ordinary engine: DINO with multi-crop
views and an EMA teacher (Caron et al., ICCV 2021).

``data.MultiCrop`` yields every example as a stack of views (global first); ``MultiView``
wraps the student so that one forward computes all views, (N, V, …) -> (V, N, D); the
EMA teacher is a copy of that wrapper and, being in eval mode, computes the global views
only; ``DINOCenter(global_views=…)`` pairs every student view with every other global
teacher view and keeps its centre in the checkpoints.

    student = MultiView(backbone_with_head, global_views=2)
    teacher = teachers.EMA(student, momentum=0.996)
    Distiller(student, teacher, dino_objective(out_dim=256)).fit(
        DataLoader(MultiCrop(images, global_views=2, local_views=4), batch_size=64), epochs=10
    )
    backbone_with_head  # the trained network (student.model)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distill.batch import logits_of
from distill.losses.selfsup import DINOCenter
from distill.objective import Objective, Term


class MultiView(nn.Module):
    """``model`` over a batch of views. ``forward(views=v)`` with ``v`` of shape
    (N, V, …) returns (V, N, D): every view in training, the first ``global_views`` in
    eval mode (what a teacher sees). ``forward(x)`` is ``model(x)``, for evaluation on
    ordinary inputs."""

    def __init__(self, model: nn.Module, global_views: int = 2) -> None:
        super().__init__()
        if global_views < 1:
            raise ValueError(f"global_views must be >= 1, got {global_views}")
        self.model, self.global_views = model, global_views

    def forward(self, x: Tensor | None = None, *, views: Tensor | None = None, **kwargs: Any):
        if views is None:
            if x is None:
                raise ValueError("MultiView needs inputs x or views=(N, V, ...)")
            return self.model(x, **kwargs)
        if views.dim() < 3:
            raise ValueError(f"views must be (N, V, ...), got shape {tuple(views.shape)}")
        n, total = views.shape[:2]
        count = total if self.training else min(self.global_views, total)
        flat = views[:, :count].transpose(0, 1).reshape(count * n, *views.shape[2:])
        out = logits_of(self.model(flat, **kwargs))
        return out.reshape(count, n, *out.shape[1:])


def dino_objective(
    out_dim: int,
    global_views: int = 2,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    center_momentum: float = 0.9,
) -> Objective:
    """The DINO objective for a ``MultiView`` student and an EMA teacher (no labels)."""
    return Objective(
        dino=Term(
            DINOCenter(
                out_dim,
                momentum=center_momentum,
                student_temperature=student_temperature,
                teacher_temperature=teacher_temperature,
                global_views=global_views,
            )
        )
    )
