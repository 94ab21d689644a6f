"""Data: datasets the recipes name, splits, augmentation and resumable loading."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from distill.data.domains import WithDomain, class_to_domain, domain_subset
from distill.data.hub import HubImages, load_hub_images
from distill.data.ids import WithExampleId
from distill.data.idx import fashion_mnist_available, load_fashion_mnist, read_idx
from distill.data.mnist1d import load_mnist1d
from distill.data.resumable import EpochSampler, ResumableLoader
from distill.data.splits import WithoutLabels, labeled_split, train_val_split
from distill.data.views import MultiCrop, random_crop_resized
from distill.data.vision import Augmented, ImageFolder, Mixed, load_cifar, load_image_folder
from distill.errors import DataError

DATASETS = ("fashion_mnist", "mnist1d", "cifar10", "cifar100", "image_folder", "hf_images")
NUM_CLASSES = {"fashion_mnist": 10, "mnist1d": 10, "cifar10": 10, "cifar100": 100}


def load_dataset(
    name: str,
    path: str | Path | None = None,
    *,
    allow_download: bool = True,
    image_size: int = 32,
    columns: dict[str, str] | None = None,
    splits: tuple[str, str] = ("train", "test"),
) -> tuple[Dataset, Dataset, int]:
    """(train, test, number of classes) for a dataset named in a recipe (``columns`` and
    ``splits``: those of an ``hf_images`` dataset)."""
    if name == "fashion_mnist":
        train, test = load_fashion_mnist(path, allow_download)
    elif name == "mnist1d":
        train, test = load_mnist1d()
    elif name in ("cifar10", "cifar100"):
        train, test = load_cifar(name, path, allow_download)
    elif name == "image_folder":
        train, test = load_image_folder(path, image_size)
        return train, test, len(train.classes)
    elif name == "hf_images":
        train, test = load_hub_images(path, image_size, columns, splits)
        labels = list(train.split[train.label]) + list(test.split[test.label])
        return train, test, len(train.classes) if train.classes else int(max(labels)) + 1
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return train, test, NUM_CLASSES[name]


__all__ = [
    "DATASETS",
    "Augmented",
    "EpochSampler",
    "HubImages",
    "ImageFolder",
    "Mixed",
    "MultiCrop",
    "ResumableLoader",
    "WithDomain",
    "WithExampleId",
    "WithoutLabels",
    "class_to_domain",
    "domain_subset",
    "fashion_mnist_available",
    "labeled_split",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "load_hub_images",
    "load_image_folder",
    "load_mnist1d",
    "random_crop_resized",
    "read_idx",
    "train_val_split",
]
