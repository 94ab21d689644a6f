"""What the engine reads from a data-loader batch, and the model output it reads back.

A batch may be ``inputs``, ``(inputs,)``, ``(inputs, labels)``, ``(inputs, labels, meta)``
or a dict. A dict's ``labels`` and ``loss_mask`` entries are taken out, so are the metadata
entries (``META_KEYS``: ``domain``, the index of the domain of each example, which routes it
to its teacher, ``example_id``, ``text``, each image's caption embedding for CLIP-style
losses, and ``example_weight``, a per-example loss weight such as a diffusion step's SNR
weighting), and the rest is passed to the model as keyword
arguments (the Hugging Face convention). ``meta`` in a tuple is a dict of metadata entries.
``loss_mask`` (N,) or (N, T) selects the rows that count in every loss. A model whose
``forward`` takes a ``domain`` argument (a routed ensemble) is given the batch's domains.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from distill.outputs import IGNORE_INDEX

META_KEYS = ("domain", "example_id", "text", "example_weight")


@dataclass
class Batch:
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None
    mask: Tensor | None = None
    meta: dict[str, Tensor] = field(default_factory=dict)

    def run(self, model: nn.Module, logits: bool = True) -> Any:
        """``model``'s output for this batch. ``logits=False`` says nobody reads the
        output logits: a Hugging Face causal LM then computes them for the last position
        only (``logits_to_keep=1``) instead of (tokens × vocab)."""
        kwargs = self.kwargs
        if (
            not logits
            and takes_argument(type(model), "logits_to_keep")
            and "logits_to_keep" not in kwargs
        ):
            kwargs = {**kwargs, "logits_to_keep": 1}
        if "domain" in self.meta and takes_argument(type(model), "domain"):
            kwargs = {**kwargs, "domain": self.meta["domain"]}
        return model(*self.args, **kwargs)

    def to(self, device: torch.device) -> Batch:
        def move(x: Any) -> Any:
            return x.to(device, non_blocking=True) if isinstance(x, Tensor) else x

        return Batch(
            args=tuple(move(a) for a in self.args),
            kwargs={k: move(v) for k, v in self.kwargs.items()},
            labels=move(self.labels),
            mask=move(self.mask),
            meta={k: move(v) for k, v in self.meta.items()},
        )

    def select(self, index: Tensor) -> Batch:
        """The examples at ``index`` (first dimension of every tensor)."""

        def pick(x: Any) -> Any:
            return x[index] if isinstance(x, Tensor) else x

        return Batch(
            args=tuple(pick(a) for a in self.args),
            kwargs={k: pick(v) for k, v in self.kwargs.items()},
            labels=pick(self.labels),
            mask=pick(self.mask),
            meta={k: pick(v) for k, v in self.meta.items()},
        )

    def size(self) -> int:
        """Examples in the batch: the first dimension of its first tensor."""
        tensors = (a for a in (*self.args, *self.kwargs.values()) if isinstance(a, Tensor))
        first = next(tensors, None)
        if first is None:
            raise ValueError("the batch holds no tensor; cannot count its examples")
        return int(first.shape[0])

    def rows(self, labelled_only: bool = True) -> int:
        """How many rows (examples, or tokens for sequence labels) this batch contributes:
        those with a label (not -100; for class probabilities (N, C), not all zeros) under
        the mask, or, with ``labelled_only=False``, every row under the mask (what a
        distillation term, which needs no label, averages over)."""
        return int(self.row_count(labelled_only))

    def row_count(self, labelled_only: bool = True) -> Tensor | int:
        """``rows``, as a tensor on the batch's device when counting needs its values (read
        it when you need the number: reading waits for the device)."""
        soft = self.labels is not None and self.labels.is_floating_point()
        if not labelled_only:
            if self.mask is not None:
                return self.mask.bool().sum()
            return self.labels.numel() if self.labels is not None and not soft else self.size()
        if soft and self.labels.dim() == 2 and self.mask is None:  # type: ignore[union-attr]
            return (self.labels.sum(-1) > 0).sum()  # class probabilities: zeros, no label
        if self.mask is not None:
            counted = self.mask.bool()
            if self.labels is not None and self.labels.shape == self.mask.shape:
                counted = counted & (self.labels != IGNORE_INDEX)
            return counted.sum()
        if self.labels is not None and not self.labels.is_floating_point():
            return (self.labels != IGNORE_INDEX).sum()
        return self.size()  # no labels, or regression targets: every example counts


@functools.cache
def takes_argument(model_type: type, argument: str) -> bool:
    """Whether ``model_type.forward`` has a parameter named ``argument``."""
    return argument in inspect.signature(model_type.forward).parameters


def as_batch(raw: Any) -> Batch:
    if isinstance(raw, Batch):
        return raw
    if isinstance(raw, Tensor):
        return Batch(args=(raw,))
    if isinstance(raw, Mapping):
        kwargs = dict(raw)
        meta = {key: kwargs.pop(key) for key in META_KEYS if key in kwargs}
        return Batch(
            args=(),
            kwargs=kwargs,
            labels=kwargs.pop("labels", None),
            mask=kwargs.pop("loss_mask", None),
            meta=meta,
        )
    if isinstance(raw, (tuple, list)) and len(raw) == 3 and isinstance(raw[2], Mapping):
        unknown = set(raw[2]) - set(META_KEYS)
        if unknown:
            raise TypeError(
                f"the third element of a batch holds metadata ({', '.join(META_KEYS)}); "
                f"got {', '.join(sorted(unknown))}"
            )
        return Batch(args=(raw[0],), labels=raw[1], meta=dict(raw[2]))
    if isinstance(raw, (tuple, list)) and 1 <= len(raw) <= 2:
        return Batch(args=(raw[0],), labels=raw[1] if len(raw) == 2 else None)
    raise TypeError(
        f"cannot read a batch of type {type(raw).__name__} (length "
        f"{len(raw) if hasattr(raw, '__len__') else '?'}); yield inputs, (inputs, labels), "
        "(inputs, labels, metadata dict) or a dict with model keyword arguments plus optional "
        "'labels' and 'loss_mask'"
    )


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: a tensor, ``.logits``, a 'logits' key or element 0."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"cannot find logits in a model output of type {type(output).__name__}; return a "
            "tensor, a tuple whose first element is the logits, or an object with .logits"
        )
    return logits
