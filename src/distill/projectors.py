"""Projectors: small trainable maps from a student feature to the teacher's shape.

FitNets' regressor (Romero et al., 2015). ``build_projector`` chooses one from the first
batch's shapes; the objective owns the projectors, the engine trains and saves them with
the run (``projectors.safetensors``), and they are not part of the exported student.

Rules, for shapes that differ (batch dimension excluded):
- (N, D_s) or (N, T, D_s) -> last dimension D_t: ``nn.Linear(D_s, D_t)``;
- (N, C_s, H, W) -> (N, C_t, H', W'): 1×1 conv + batch norm, resized to (H', W');
- (N, C_s, L) -> (N, C_t, L): 1×1 ``nn.Conv1d``;
anything else is ambiguous and asks for an explicit projector module.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvProjector(nn.Module):
    """1×1 convolution and batch norm, then resize to the teacher's spatial size."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.norm(self.conv(x))


def build_projector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A projector mapping tensors of ``student_shape`` to ``teacher_shape`` (see module doc)."""
    s, t = tuple(student_shape), tuple(teacher_shape)
    if s == t:
        return nn.Identity()
    if len(s) != len(t) or s[0] != t[0]:
        raise ValueError(
            f"cannot project student features {s} to teacher features {t}: ranks or batch "
            "sizes differ; tap comparable layers or pass projector=<your nn.Module>"
        )
    if len(s) == 4:
        return ConvProjector(s[1], t[1], (t[2], t[3]))
    if s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])
    if len(s) == 3 and s[2] == t[2]:
        return nn.Conv1d(s[1], t[1], kernel_size=1)
    raise ValueError(
        f"cannot choose a projector from student features {s} to teacher features {t}: "
        "more than one dimension differs; pass projector=<your nn.Module> to the term"
    )
