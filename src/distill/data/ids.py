"""Example ids: what a teacher cache looks its answers up by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset


class WithExampleId(Dataset):
    """Each item of ``dataset`` with its index as ``example_id``: a dict item gains the key,
    ``(inputs, label)`` becomes ``(inputs, label, {"example_id": i})`` and an item that
    already has a metadata dict gains the entry. Wrap the full dataset before splitting, so
    an example keeps its id in every split; ``offset`` keeps two datasets' ids apart."""

    def __init__(self, dataset: Dataset, offset: int = 0) -> None:
        self.dataset, self.offset = dataset, offset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        example_id = torch.tensor(self.offset + index)
        if isinstance(item, Mapping):
            return {**item, "example_id": example_id}
        if isinstance(item, (tuple, list)) and len(item) == 3 and isinstance(item[2], Mapping):
            return item[0], item[1], {**item[2], "example_id": example_id}
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return item[0], item[1], {"example_id": example_id}
        raise TypeError(
            f"cannot add an example_id to an item of type {type(item).__name__}; yield a dict, "
            "(inputs, label) or (inputs, label, metadata dict)"
        )
