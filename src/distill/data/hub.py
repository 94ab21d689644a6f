"""Image datasets of the Hugging Face ``datasets`` library: a hub id or a local folder
(``save_to_disk``'s, or files ``datasets.load_dataset`` reads), with an image column and a
class column (a ``ClassLabel`` names the classes); other columns, such as captions, are
read by name (``HubImages.texts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.errors import DataError, MissingDependency


class HubImages(Dataset):
    """One split: ``(image, label)`` with the image as (3, size, size) in [-1, 1] (as
    ``ImageFolder``); ``classes`` are the label column's names, when it has them."""

    def __init__(self, split: Any, image: str, label: str, image_size: int) -> None:
        missing = [c for c in (image, label) if c not in split.column_names]
        if missing:
            raise DataError(
                f"data.columns: no column {missing} in the dataset (it has "
                f"{', '.join(split.column_names)}); name its image and label columns"
            )
        self.split, self.image, self.label, self.image_size = split, image, label, image_size
        self.classes = getattr(split.features[label], "names", None)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.split[index]
        picture = row[self.image].convert("RGB").resize((self.image_size, self.image_size))
        x = torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy())
        return x.permute(2, 0, 1).float().div(127.5).sub(1.0), int(row[self.label])

    def texts(self, column: str) -> list[str | None]:
        """Column ``column`` of every row (empty strings as None)."""
        if column not in self.split.column_names:
            raise DataError(
                f"data.captions.column: no column {column!r} in the dataset (it has "
                f"{', '.join(self.split.column_names)})"
            )
        return [
            str(text).strip() or None if text is not None else None for text in self.split[column]
        ]


def load_hub_images(
    source: str | Path | None,
    image_size: int = 32,
    columns: dict[str, str] | None = None,
    splits: tuple[str, str] = ("train", "test"),
) -> tuple[HubImages, HubImages]:
    """(train, test) of ``source``: a folder written by ``save_to_disk``, else anything
    ``datasets.load_dataset`` takes (a hub id, a folder of data files)."""
    try:
        import datasets
    except ImportError as error:
        raise MissingDependency("hf_images datasets are read with: pip install datasets") from error
    if source is None:
        raise DataError("data.dataset=hf_images needs data.path (a hub id or a local folder)")
    columns = {"image": "image", "label": "label", **(columns or {})}
    try:
        if (Path(source) / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(source))
        else:
            loaded = datasets.load_dataset(str(source))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise DataError(f"data.path {source}: {str(error).splitlines()[0]}") from None
    absent = [s for s in splits if s not in loaded]
    if absent:
        raise DataError(f"data.splits: {source} has no split {absent} (it has {', '.join(loaded)})")
    train, test = (
        HubImages(loaded[s], columns["image"], columns["label"], image_size) for s in splits
    )
    return train, test
