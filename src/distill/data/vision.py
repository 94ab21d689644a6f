"""CIFAR-10/100 through torchvision, a generic image folder, and tensor augmentation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from distill.dependencies import optional_import
from distill.errors import DataError
from distill.paths import cache_root

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _normalized(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def load_cifar(
    name: str, path: str | Path | None = None, allow_download: bool = True
) -> tuple[TensorDataset, TensorDataset]:
    """CIFAR-10 or CIFAR-100 (train, test) as normalised (N, 3, 32, 32) tensors."""
    torchvision = optional_import("torchvision", f"data.dataset={name}")
    root = Path(path or os.environ.get("DISTILL_DATA", cache_root()))
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    mean, std = CIFAR_STATS[name]
    parts = []
    for train in (True, False):
        try:
            raw = cls(str(root), train=train, download=allow_download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{name} not found under {root} ({error}); set data.path or $DISTILL_DATA"
            ) from error
        parts.append(TensorDataset(_normalized(raw.data, mean, std), torch.tensor(raw.targets)))
    return parts[0], parts[1]


class ImageFolder(Dataset):
    """``root/<class>/<image>`` files as (3, size, size) tensors scaled to [-1, 1]; classes
    are the sorted folder names."""

    def __init__(self, root: str | Path, image_size: int = 32) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.samples = [
            (file, label)
            for label, name in enumerate(self.classes)
            for file in sorted((self.root / name).rglob("*"))
            if file.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise FileNotFoundError(
                f"no images in {self.root}; expected {self.root}/<class name>/<image file>"
            )
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        file, label = self.samples[index]
        with Image.open(file) as image:
            rgb = image.convert("RGB").resize((self.image_size, self.image_size))
            x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
        return x.permute(2, 0, 1).float().div(127.5).sub(1.0), label


def load_image_folder(path: str | Path | None, image_size: int = 32):
    """``path/train`` and ``path/test`` image folders with the same class names."""
    if path is None:
        raise DataError("data.dataset=image_folder needs data.path (with train/ and test/)")
    train, test = (
        ImageFolder(Path(path) / "train", image_size),
        ImageFolder(Path(path) / "test", image_size),
    )
    if train.classes != test.classes:
        raise DataError(f"{path}: train classes {train.classes} != test classes {test.classes}")
    return train, test


class Augmented(Dataset):
    """Random horizontal flip and random crop after zero padding, on tensors, for images
    (C, H, W) or signals (C, L): the classic CIFAR augmentation."""

    def __init__(self, dataset: Dataset, flip: bool = True, crop_padding: int = 4) -> None:
        self.dataset, self.flip, self.padding = dataset, flip, crop_padding

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        x, y, *meta = self.dataset[index]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.padding:
            p = self.padding
            size = x.shape[1:]
            padded = F.pad(x, (p, p) * len(size))
            offsets = [int(torch.randint(0, 2 * p + 1, ())) for _ in size]
            window = tuple(slice(o, o + s) for o, s in zip(offsets, size, strict=True))
            x = padded[(slice(None), *window)]
        return (x, y, *meta)


class Mixed(Dataset):
    """Each input mixed with another drawn at random, ``λ x_i + (1 − λ) x_j`` with
    λ ~ U(0, 1) (mixup, Zhang et al. 2018, without its labels): for unlabelled rows that a
    teacher labels live, so every epoch brings new inputs. Labels are dropped (-100)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        x, _, *meta = self.dataset[index]
        other = self.dataset[int(torch.randint(len(self), ()))][0]
        weight = torch.rand(())
        return (weight * x + (1 - weight) * other, -100, *meta)
