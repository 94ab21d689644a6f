"""The kinds of teacher a recipe's ``teacher.model`` names, in one place: one network (any
model source: ``zoo:``, ``hf:``, ``hf-clip:``, a run directory, ...), the student's moving
average (``ema``: ``teachers.EMA``), several teachers combined (``ensemble``:
``teachers.Ensemble``) or a language model on an inference server (``served:<url>``:
``teachers.Served``). Code asks ``TeacherKind.of(model)``, never compares the strings.

A student's ``model: teacher`` (a copy of the teacher's layers) is the other recipe word
for a teacher: ``copies_teacher``."""

from __future__ import annotations

from enum import Enum

SERVED_PREFIX = "served:"
COPY_OF_TEACHER = "teacher"


class TeacherKind(Enum):
    """What ``teacher.model`` names."""

    MODEL = "model"  # one network, from any model source
    EMA = "ema"  # the student's moving average: no weights of its own
    ENSEMBLE = "ensemble"  # teacher.members, combined or routed
    SERVED = "served"  # served:<url>: top-k log-probs over HTTP

    @classmethod
    def of(cls, model: str) -> TeacherKind:
        if model.startswith(SERVED_PREFIX):
            return cls.SERVED
        return {"ema": cls.EMA, "ensemble": cls.ENSEMBLE}.get(model, cls.MODEL)

    @property
    def has_weights(self) -> bool:
        """A network whose weights the run loads or trains (one model, or each member)."""
        return self in (TeacherKind.MODEL, TeacherKind.ENSEMBLE)


def served_url(model: str) -> str:
    """The server's URL in ``served:<url>``."""
    return model.removeprefix(SERVED_PREFIX)


def copies_teacher(model: str) -> bool:
    """A student (or search candidate) ``model: teacher``: a copy of teacher layers."""
    return model == COPY_OF_TEACHER
