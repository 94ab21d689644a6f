"""A self-supervised run's rows: the training images as multi-crop views with their labels
hidden (what the features learn from), the labelled subset the label-only baseline and
the first probe read, every training image with its label (what k-NN and the probes are
fitted on, never trained on), validation and test rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from distill.data import WithoutLabels, train_val_split
from distill.data.views import MultiCrop
from distill.recipes import Recipe
from distill.runs.task import Splits


@dataclass
class Rows(Splits):
    """The splits, plus every training image with its label (the probes' pool) in a fixed
    order, so that a probe with ``n`` labels reads the first ``n``."""

    probe_pool: Dataset
    num_classes: int
    in_shape: tuple[int, ...]

    def labelled(self, count: int) -> Dataset:
        """The first ``count`` examples of the probes' pool (0: all of them)."""
        size = len(self.probe_pool)  # type: ignore[arg-type]
        return self.probe_pool if count in (0, size) else Subset(self.probe_pool, range(count))


def prepare_rows(recipe: Recipe) -> Rows:
    """The recipe's splits (see the module)."""
    spec = recipe.data
    train, test, num_classes = spec.load()
    fit, val = train_val_split(train, spec.val_fraction, spec.split_seed)
    order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(spec.split_seed))
    pool = Subset(fit, order.tolist())
    views = spec.views
    unlabelled = MultiCrop(
        WithoutLabels(fit),
        global_views=views.global_views,
        local_views=views.local_views,
        global_scale=views.global_scale,
        local_scale=views.local_scale,
        flip=views.flip,
    )
    rows = Rows(
        student_train=unlabelled,
        baseline_train=pool,
        val=val,
        test=test,
        regime="",
        probe_pool=pool,
        num_classes=num_classes,
        in_shape=tuple(test[0][0].shape),
    )
    first = spec.probe.labels[0]
    rows.baseline_train = rows.labelled(first)
    probes = ", ".join(map(labels_named, spec.probe.labels))
    rows.regime = (
        f"{spec.dataset}: {len(fit):,} unlabelled training images as {views.global_views} "
        f"global + {views.local_views} local views; probes on {probes} labels; "
        f"{len(test):,} test images"
    )
    return rows


def labels_named(count: int) -> str:
    return "all" if count == 0 else f"{count:,}"
