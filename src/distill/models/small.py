"""Small teachers and students for Fashion-MNIST (1×28×28) and MNIST-1D (1×40)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Optionally average-pool the input by ``pool`` (a lower resolution: fewer inputs),
    flatten, then hidden ReLU layers named ``hidden.0``, ``hidden.1``…, then ``fc``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int | Sequence[int] = 64,
        dropout: float = 0.0,
        pool: int = 1,
        in_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.pool: nn.Module | None = None
        if pool != 1:
            if pool < 1 or in_shape is None or len(in_shape) not in (2, 3):
                raise ValueError(
                    f"MLP pool must be >= 1 and needs (C, L) or (C, H, W) inputs, got {pool}"
                )
            self.pool = (nn.AvgPool2d if len(in_shape) == 3 else nn.AvgPool1d)(pool)
            in_features = in_shape[0] * math.prod(size // pool for size in in_shape[1:])
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = []
        previous = in_features
        for width in widths:
            block = [nn.Linear(previous, width), nn.ReLU()]
            if dropout:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            previous = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return self.fc(self.hidden(x.flatten(1)))


def _conv(cin: int, cout: int, dims: int, kernel: int, separable: bool) -> nn.Module:
    """A ``kernel``-wide convolution that keeps the size; ``separable``: depthwise
    (one filter per input channel) then pointwise 1×1 (MobileNet, Howard et al. 2017)."""
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    if not separable:
        return conv(cin, cout, kernel, padding=kernel // 2, bias=False)
    return nn.Sequential(
        conv(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False),
        conv(cin, cout, 1, bias=False),
    )


def _conv_block(
    cin: int, cout: int, dims: int, kernel: int = 3, depth: int = 1, separable: bool = False
) -> nn.Sequential:
    """``depth`` × (conv, batch norm, ReLU), then max-pool 2."""
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    pool = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            _conv(cin if i == 0 else cout, cout, dims, kernel, separable),
            norm(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers, pool(2))


class CNN(nn.Module):
    """Conv stages named ``block1``… (each ``depth`` × (conv ``kernel``, batch norm, ReLU),
    then max-pool 2), a hidden ``fc1`` (none when ``hidden`` is 0) and the classifier
    ``fc``; 2-D for images, 1-D for signals. The family ``distill search`` explores:

    - ``channels``: one width per stage; ``depth``: convolutions per stage, one number for
      every stage or one per stage;
    - ``separable``: depthwise-separable convolutions (cheaper per output channel);
    - ``pool``: average-pool the input by this factor first (a lower input resolution).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        kernel: int = 3,
        depth: int | Sequence[int] = 1,
        separable: bool = False,
        pool: int = 1,
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"CNN kernel must be odd (the size is kept), got {kernel}")
        dims = len(in_shape) - 1
        if dims not in (1, 2):
            raise ValueError(f"CNN takes (C, L) or (C, H, W) inputs, got {tuple(in_shape)}")
        depths = [depth] * len(channels) if isinstance(depth, int) else list(depth)
        if len(depths) != len(channels) or min(depths, default=1) < 1:
            raise ValueError(
                f"CNN depth must be >= 1, one number or one per stage ({len(channels)} "
                f"channels), got {depth}"
            )
        if pool < 1:
            raise ValueError(f"CNN pool must be >= 1, got {pool}")
        spatial = [size // pool for size in in_shape[1:]]
        if min(spatial) < 2 ** len(channels):
            raise ValueError(
                f"CNN: {len(channels)} stages halve the input {len(channels)} times; an input "
                f"of {tuple(in_shape)} pooled by {pool} is too small for them"
            )
        self.pool = (nn.AvgPool2d if dims == 2 else nn.AvgPool1d)(pool) if pool > 1 else None
        previous = in_shape[0]
        for i, (width, count) in enumerate(zip(channels, depths, strict=True), start=1):
            block = _conv_block(previous, width, dims, kernel, count, separable)
            self.add_module(f"block{i}", block)
            previous = width
        self.depth = len(channels)
        flat = previous * math.prod(size // 2**self.depth for size in spatial)
        self.fc1 = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU()) if hidden else nn.Identity()
        self.fc = nn.Linear(hidden or flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x)
        return self.fc(self.fc1(x.flatten(1)))
