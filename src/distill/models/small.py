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


def _conv_block(cin: int, cout: int, dims: int, kernel: int = 3) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    pool = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
    return nn.Sequential(
        conv(cin, cout, kernel, padding=kernel // 2, bias=False), norm(cout), nn.ReLU(), pool(2)
    )


class CNN(nn.Module):
    """Conv blocks (conv ``kernel``, batch norm, ReLU, max-pool 2) named ``block1``…, a
    hidden ``fc1`` and the classifier ``fc``; 2-D for images, 1-D for signals."""

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"CNN kernel must be odd (the size is kept), got {kernel}")
        dims = len(in_shape) - 1
        if dims not in (1, 2):
            raise ValueError(f"CNN takes (C, L) or (C, H, W) inputs, got {tuple(in_shape)}")
        previous = in_shape[0]
        for i, width in enumerate(channels, start=1):
            self.add_module(f"block{i}", _conv_block(previous, width, dims, kernel))
            previous = width
        self.depth = len(channels)
        spatial = [size // 2**self.depth for size in in_shape[1:]]
        flat = previous * int(torch.tensor(spatial).prod())
        self.fc1 = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x)
        return self.fc(self.fc1(x.flatten(1)))
