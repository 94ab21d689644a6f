"""A classification run's data: the dataset split into the teacher's training rows, the
labelled rows of the label-only student, the distilled student's transfer set (some
labels kept, or all), validation and test rows; domains, example ids for a teacher
cache, augmentation, and PATE's public pool set aside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, Subset

from distill.data import (
    Augmented,
    WithDomain,
    WithExampleId,
    WithoutLabels,
    class_to_domain,
    labeled_split,
    train_val_split,
)
from distill.errors import RecipeError
from distill.recipes import Recipe
from distill.runs.task import Splits
from distill.runs.tasks.private.rows import split_public


@dataclass
class Data(Splits):
    """A classification run's splits, plus the teacher's training rows and the shapes."""

    teacher_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    public: Dataset | None = None  # pate: the public pool the student's queries come from
    privacy: dict[str, Any] | None = None  # pate: the answers' (ε, δ) and what they cover
    # data.synthetic, a generator: the student that learned alongside it (warm_start)
    student_start: dict[str, Tensor] | None = None


def prepare_data(recipe: Recipe) -> Data:
    """The recipe's splits (see the module)."""
    spec = recipe.data
    train, test, num_classes = spec.load()
    if spec.domains:
        try:
            domain_of_class = class_to_domain(spec.domains, num_classes)
        except ValueError as error:
            raise RecipeError(str(error)) from error
        train, test = WithDomain(train, domain_of_class), WithDomain(test, domain_of_class)
    if recipe.cache is not None:  # ids for the teacher-output cache, unique over both sets
        train, test = WithExampleId(train), WithExampleId(test, offset=len(train))
    teacher_train, teacher_val = train_val_split(train, spec.val_fraction, spec.split_seed)
    public = None
    if recipe.pate is not None:
        public, teacher_train = split_public(teacher_train, recipe)
    if spec.labeled is None:
        student_train = baseline_train = teacher_train
        val = teacher_val
        regime = f"all {len(teacher_train):,} training labels"
        if public is not None:
            regime = (
                f"{len(teacher_train):,} private labelled rows split among "
                f"{recipe.pate.teachers} teachers; the student sees only public inputs "  # type: ignore[union-attr]
                f"({len(public):,} set aside, labels hidden) and the teachers' noisy answers"
            )
    else:
        baseline_train, val, student_train = labeled_split(
            train, spec.labeled, spec.val_fraction, spec.split_seed
        )
        if spec.transfer_classes is not None:
            student_train = only_classes(student_train, train, spec.transfer_classes)
        regime = (
            f"{spec.labeled:,} labels ({len(baseline_train):,} train + {len(val):,} validation); "
            + (
                f"the distilled student sees no training images, only {spec.synthetic.examples:,} "
                "inputs synthesised from the teacher ("
                + ("a generator" if spec.synthetic.method == "generator" else "DeepInversion")
                + ")"
                if spec.synthetic is not None
                else f"the distilled student also learns from the teacher on "
                f"{len(student_train):,} training inputs (a transfer set)"
            )
        )
    if spec.augment:
        teacher_train, student_train, baseline_train = (
            Augmented(teacher_train),
            Augmented(student_train),
            Augmented(baseline_train),
        )
    return Data(
        student_train=student_train,
        baseline_train=baseline_train,
        val=val,
        test=test,
        regime=regime,
        teacher_train=teacher_train,
        num_classes=num_classes,
        in_shape=tuple(train[0][0].shape),
        public=public,
    )


def only_classes(transfer: Dataset, labelled_source: Dataset, classes: list[int]) -> Subset:
    """The transfer set's labelled rows plus its unlabelled rows of ``classes`` (read from
    the source's true labels, which the transfer set hides)."""
    assert isinstance(transfer, WithoutLabels) and isinstance(transfer.dataset, Subset)
    source_index = transfer.dataset.indices
    wanted = set(classes)
    keep = [
        i
        for i in range(len(transfer))
        if i in transfer.keep or int(labelled_source[source_index[i]][1]) in wanted
    ]
    return Subset(transfer, keep)
