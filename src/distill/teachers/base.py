"""What every teacher is: anything that answers a batch with a ``TeacherOutput`` and never
trains. Subclasses implement ``__call__``; the rest has defaults the engine relies on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import nn

from distill.batch import Batch
from distill.outputs import TeacherOutput


class Teacher(ABC):
    """The teacher protocol of the engine.

    - ``__call__(batch, logits=True)``: the answer for one batch (``logits=False``: nobody
      reads the full logits this step, e.g. token-level KD through the LM heads);
    - ``to(device)``: move what it computes with (default: nothing to move);
    - ``add_taps(paths)``: capture features at these module paths (default: refuses any,
      as a teacher without a model has no features);
    - ``after_step(step, total_steps)``: called after every optimizer step (default: no-op;
      an EMA teacher follows the student here);
    - ``compile(**options)``: ``torch.compile`` its models in place (default: nothing to
      compile);
    - ``state_module``: weights that change during training and so belong in checkpoints
      (default: None);
    - ``fixed_temperature``: the one temperature its answers hold at, when they are not
      plain logits (a mixture of teachers, a top-k cache); None otherwise.
    """

    fixed_temperature: float | None = None

    @abstractmethod
    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput: ...

    def to(self, device: torch.device | str) -> Teacher:
        return self

    def add_taps(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if paths:
            raise ValueError(
                f"{type(self).__name__} has no model to tap at {paths}; use a live teacher "
                "(teachers.Module) for feature losses"
            )

    def after_step(self, step: int, total_steps: int) -> None:  # noqa: B027 (a no-op default)
        pass

    def compile(self, **options: object) -> None:  # noqa: B027 (a no-op default)
        pass

    @property
    def state_module(self) -> nn.Module | None:
        return None
