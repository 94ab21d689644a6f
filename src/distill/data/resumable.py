"""Resumable loaders: the engine knows the exact order of every epoch.

``ResumableLoader`` rebuilds a map-style ``DataLoader`` around an ``EpochSampler`` so the
engine knows the exact order of every epoch: the permutation depends only on
``(seed, epoch)``, the data are sharded over ranks, and a resumed run starts at the
batch where the interrupted one stopped without loading the batches before it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (permutation from seed + epoch, one shard per rank) that can
    start ``skip`` indices into the epoch."""

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, rank: int, world: int):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ResumableLoader:
    """Iterate a data loader epoch by epoch, optionally starting mid-epoch."""

    def __init__(
        self, loader: DataLoader, *, seed: int, rank: int = 0, world: int = 1, pin: bool = False
    ):
        """``pin``: batches in page-locked memory (for non-blocking copies to a GPU)."""
        self.source = loader
        self.sampler: EpochSampler | None = None
        self.loader = loader
        rebuildable = loader.batch_size is not None and isinstance(
            loader.sampler, (RandomSampler, SequentialSampler)
        )
        if rebuildable:
            self.sampler = EpochSampler(
                loader.dataset,
                shuffle=isinstance(loader.sampler, RandomSampler),
                seed=seed,
                rank=rank,
                world=world,
            )
            self.loader = _rebuild(loader, self.sampler, seed, pin)
        elif world > 1:
            raise ValueError(
                "a DataLoader with a custom sampler or an IterableDataset cannot be sharded "
                "over processes by distill; pass a map-style dataset with shuffle=True/False"
            )
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        """Batches per full epoch."""
        if self.sampler is None:
            return len(self.source)
        n = self.sampler.num_samples
        return n // self.batch_size if self.loader.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Any]:
        if self.sampler is None:  # used as given: skipping reads the skipped batches
            return itertools.islice(iter(self.loader), skip_batches, None)
        self.sampler.set_epoch(epoch)
        self.sampler.skip = skip_batches * self.batch_size
        self.loader.generator.manual_seed(self.sampler.seed + epoch)
        return iter(self.loader)


def _rebuild(loader: DataLoader, sampler: EpochSampler, seed: int, pin: bool) -> DataLoader:
    # The generator fixes the workers' base seed per epoch, so no draw is taken from the
    # global RNG when an epoch starts.
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory or pin,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
