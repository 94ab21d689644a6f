"""The errors distill explains. Each names the field, file or value at fault and how to
fix it; the command line prints them as one line. Anything else (a ``TypeError`` from a
bug, say) keeps its traceback.

They also derive from the built-in type a caller would expect (``ValueError``,
``ImportError``, ...), so ``except ValueError`` still catches a bad recipe."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of another library's error message (its type's name if
    none): the part of a long message that says what happened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class DistillError(Exception):
    """Base class: an error whose message is the whole story."""


class RecipeError(DistillError, ValueError):
    """A recipe that cannot be used; the message names the file, the field and the fix."""


class DataError(DistillError, ValueError):
    """Data that cannot be read or does not fit: a missing file, a corrupt download, an
    empty split."""


class ModelError(DistillError, ValueError):
    """A model that cannot be built or loaded: an unknown name, mismatched weights."""


class ModelArgumentError(ModelError, TypeError):
    """Arguments a model's constructor does not take."""


class CheckpointError(DistillError, ValueError):
    """Weights or a checkpoint that do not fit the model, or a run directory that is not one."""


class CacheError(DistillError, ValueError):
    """A teacher-output cache that is missing, corrupt or built for other inputs."""


class ServedTeacherError(DistillError, ConnectionError):
    """A teacher on an inference server that cannot answer as asked: unreachable after its
    retries, refusing the request, or answering without (enough) prompt log-probs."""


class UsageError(DistillError, ValueError):
    """A command's argument that does not fit what it points at (a stage a run lacks)."""


class PushError(DistillError, OSError):
    """``distill push`` could not send the student to the Hugging Face Hub: no network, no
    token, or the Hub refused; the folder it would have sent stays in the run."""


class NonFiniteLoss(DistillError, FloatingPointError):
    """Training produced a non-finite loss or gradient norm (``train.on_nonfinite: stop``)."""


class MissingDependency(DistillError, ImportError):
    """An optional package is not installed; the message says which extra to install."""
