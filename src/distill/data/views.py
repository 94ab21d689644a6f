"""Multi-crop views of each example, for self-distillation (DINO, BYOL).

``MultiCrop(dataset)`` turns an example ``(x, label)`` into ``{"views": (V, *x.shape),
"labels": label}``: ``global_views`` large random crops first, then ``local_views`` small
ones, each resampled to the input's size so that all views stack into one tensor and one
forward (``selfsup.MultiView``) computes them together. Inputs are (C, L) signals or
(C, H, W) images. DINO (Caron et al. 2021) gives the teacher the global views only and the
student every view, so the student learns "local-to-global" correspondences.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


def random_crop_resized(
    x: Tensor, scale: tuple[float, float], generator: torch.Generator | None = None
) -> Tensor:
    """A random crop of ``x`` (C, *spatial) covering a share of its area (or length)
    drawn uniformly from ``scale``, resampled back to ``x``'s size."""
    spatial = x.shape[1:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"random crops take (C, L) or (C, H, W) inputs, got {tuple(x.shape)}")
    low, high = scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    area = low + (high - low) * float(torch.rand((), generator=generator))
    side = area ** (1 / len(spatial))  # the same share of every side
    window = []
    for size in spatial:
        length = max(1, round(size * side))
        start = int(torch.randint(0, size - length + 1, (), generator=generator))
        window.append(slice(start, start + length))
    crop = x[(slice(None), *window)].float()
    mode = "linear" if len(spatial) == 1 else "bilinear"
    return F.interpolate(crop[None], size=tuple(spatial), mode=mode, align_corners=False)[0]


class MultiCrop(Dataset):
    """Each example as ``global_views`` crops covering ``global_scale`` of it and
    ``local_views`` crops covering ``local_scale`` (DINO's defaults: 2 global at 0.4–1,
    several local at 0.05–0.4 of the area), with optional horizontal flips for images."""

    def __init__(
        self,
        dataset: Dataset,
        global_views: int = 2,
        local_views: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        flip: bool = False,
    ) -> None:
        if global_views < 1 or local_views < 0:
            raise ValueError(
                f"MultiCrop needs global_views >= 1 and local_views >= 0, got {global_views} "
                f"and {local_views}"
            )
        self.dataset = dataset
        self.global_views, self.local_views = global_views, local_views
        self.global_scale, self.local_scale = global_scale, local_scale
        self.flip = flip

    @property
    def views(self) -> int:
        return self.global_views + self.local_views

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        x, y, *_ = self.dataset[index]
        scales = [self.global_scale] * self.global_views + [self.local_scale] * self.local_views
        views = []
        for scale in scales:
            view = random_crop_resized(x, scale)
            if self.flip and torch.rand(()) < 0.5:
                view = view.flip(-1)
            views.append(view)
        return {"views": torch.stack(views), "labels": y}
