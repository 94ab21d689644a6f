"""MNIST-1D (Greydanus, 2020): 1-D signals of 40 samples, 10 classes, made procedurally by
the ``mnist1d`` package, so it needs no download."""

from __future__ import annotations

import functools

import torch
from torch.utils.data import TensorDataset

from distill.errors import MissingDependency


def load_mnist1d(seed: int = 42) -> tuple[TensorDataset, TensorDataset]:
    """(train, test): 4,000 and 1,000 signals as (N, 1, 40) floats with int64 labels. Made
    once per process and seed (0.9 s each time), then copied: a search's trials and its
    full runs, or several recipes in one process, share the generation."""
    x, y, x_test, y_test = _generated(seed)
    return TensorDataset(x.clone(), y.clone()), TensorDataset(x_test.clone(), y_test.clone())


@functools.lru_cache(maxsize=4)
def _generated(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    try:  # here: the package takes 0.7 s to import, and only MNIST-1D runs need it
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise MissingDependency(
            "MNIST-1D needs the mnist1d package: pip install mnist1d"
        ) from error
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)

    def signals(x) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32).unsqueeze(1)

    def labels(y) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.long)

    return signals(data["x"]), labels(data["y"]), signals(data["x_test"]), labels(data["y_test"])
