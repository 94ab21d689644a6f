"""A live PyTorch model as a frozen teacher."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from distill.batch import Batch, logits_of
from distill.outputs import TeacherOutput
from distill.taps import Taps
from distill.teachers.base import Teacher


class Module(Teacher):
    """A frozen ``nn.Module`` teacher: ``eval()``, no gradients (``torch.no_grad``).

    ``taps`` are dotted module paths whose outputs come back in ``TeacherOutput.features``
    (the objective adds the paths its terms read). ``autocast_dtype`` (e.g.
    ``torch.bfloat16``) runs the forward under autocast on the teacher's device.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Iterable[str] = (),
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.taps = Taps(model, taps)
        self.autocast_dtype = autocast_dtype

    def add_taps(self, paths: Iterable[str]) -> None:
        self.taps.add(paths)

    def to(self, device: torch.device | str) -> Module:
        self.model.to(device)
        return self

    def compile(self, **options: object) -> None:
        self.model.compile(**options)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        """The teacher's logits and tapped features for ``batch``; ``logits=False`` lets a
        Hugging Face causal LM skip its full (tokens × vocab) logits (see ``Batch.run``)."""
        if self.model.training:
            self.model.eval()
        # no_grad, not inference_mode: the student's loss graph saves these outputs for its
        # backward, which inference tensors cannot be (they would need a copy each step)
        with torch.no_grad(), self._autocast():
            output = batch.run(self.model, logits=logits)
            features = self.taps.pop()
            logits = logits_of(output)
        return TeacherOutput(
            logits=logits,
            features=features,
        )
