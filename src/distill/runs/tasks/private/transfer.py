"""The private transfer sets as one step of a classification run: once the teacher is
known, ``data.synthetic`` replaces the distilled student's rows with inputs synthesised
from it (DeepInversion), and ``pate`` with the public queries its partition teachers
answered, noisily (the students then learn those answers only, never the teachers'
outputs); ``private_summary`` is what the summary says about either."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, nn
from torch.utils.data import Dataset

from distill.methods.pate import Votes
from distill.recipes import Recipe
from distill.runs.tasks.private.rows import pate_rows, privacy_note, synthetic_rows
from distill.runs.workdir import Log


class PrivateSplits(Protocol):
    """What a classification run's splits hold for a private transfer set."""

    student_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    public: Dataset | None
    privacy: dict[str, Any] | None
    student_start: dict[str, Tensor] | None
    provenance: dict[str, Any]


def is_private(recipe: Recipe) -> bool:
    """The recipe makes its student's rows from the teacher (data-free or PATE)."""
    return getattr(recipe.data, "synthetic", None) is not None or recipe.pate is not None


def transfer_rows(
    recipe: Recipe,
    data: PrivateSplits,
    teacher: nn.Module,
    build_student: Callable[[], nn.Module],
    progress: bool,
    log: Log,
) -> tuple[Any, nn.Module | None]:
    """(the splits with the student's rows made from ``teacher``, the teacher the students
    learn from live: ``teacher``, or None for PATE, whose students learn the answers);
    ``build_student`` makes the student a generator learns against."""
    if getattr(recipe.data, "synthetic", None) is not None:
        rows, start, record = synthetic_rows(
            recipe, teacher, data.in_shape, data.num_classes, build_student, progress, log
        )
        provenance = {**data.provenance, "synthetic": record}
        made = dataclasses.replace(
            data, student_train=rows, student_start=start, provenance=provenance
        )  # type: ignore[type-var]
        return made, teacher
    if recipe.pate is not None:
        assert isinstance(teacher, Votes) and data.public is not None
        rows, privacy = pate_rows(recipe, data.public, teacher, progress, log)
        made = dataclasses.replace(data, student_train=rows, privacy=privacy)  # type: ignore[type-var]
        return made, None
    return data, teacher


def private_summary(recipe: Recipe, data: PrivateSplits) -> dict[str, Any]:
    """The summary's privacy record and the names of its rows."""
    if data.privacy is not None:
        return {
            "privacy": data.privacy,
            "data_note": privacy_note(data.privacy),
            "row_labels": {
                "teacher": f"teachers' plain vote ({data.privacy['teachers']}, no noise)",
                "student": "student, on the noisy answers",
            },
        }
    if getattr(recipe.data, "synthetic", None) is not None:
        return {
            "synthesis": data.provenance.get("synthetic"),
            "row_labels": {"student": "student, distilled on synthetic inputs"},
        }
    return {}
