"""Taps: capture intermediate tensors of any ``nn.Module`` by dotted path, with hooks.

Models are never rewritten. ``Taps(model, ["layer3", "fc:input"])`` registers one forward
hook per path; after each forward, ``taps.features["layer3"]`` holds that submodule's
output and ``taps.features["fc:input"]`` the first positional input of ``fc``. Outputs
that are tuples or Hugging Face ``ModelOutput`` objects contribute their first element
(the hidden states of a transformer layer). When a module runs several times in one
forward, the last call wins.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError

INPUT_SUFFIX = ":input"


class TapError(DistillError, KeyError):
    """A tap path that does not name a submodule of the model."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def first_tensor(value: Any, where: str) -> Tensor:
    """The tensor a hook sees: the value itself, or the first element of a tuple/ModelOutput."""
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(
        f"tap {where!r} produced {type(value).__name__}, not a tensor or a tuple starting "
        "with one; tap a submodule whose output is a tensor"
    )


def resolve(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (without ``:input``); a clear error lists close matches."""
    module_path = path.removesuffix(INPUT_SUFFIX)
    try:
        return model.get_submodule(module_path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(module_path, names, n=5, cutoff=0.4)
        shown = close or names[:8]
        hint = f"{'closest' if close else 'some'} paths: {', '.join(shown)}"
        raise TapError(
            f"no submodule {module_path!r} in {type(model).__name__}; {hint} "
            "(append ':input' to capture a module's input)"
        ) from None


class Taps:
    """Forward hooks that record the tensors at the given dotted module paths."""

    def __init__(self, model: nn.Module, paths: Iterable[str] = ()) -> None:
        self.model = model
        self.features: dict[str, Tensor] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self.add(paths)

    @property
    def paths(self) -> list[str]:
        return list(self._handles)

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path in self._handles:
                continue
            module = resolve(self.model, path)
            if path.endswith(INPUT_SUFFIX):
                handle = module.register_forward_pre_hook(self._input_hook(path))
            else:
                handle = module.register_forward_hook(self._output_hook(path))
            self._handles[path] = handle

    def _output_hook(self, path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.features[path] = first_tensor(output, path)

        return hook

    def _input_hook(self, path: str):
        def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            self.features[path] = first_tensor(inputs, path)

        return hook

    def pop(self) -> dict[str, Tensor]:
        """The features of the last forward; clears them so stale tensors never leak."""
        features, self.features = self.features, {}
        missing = [p for p in self._handles if p not in features]
        if missing:
            raise RuntimeError(
                f"taps {missing} did not fire during the forward pass; is that submodule "
                "used by the model's forward?"
            )
        return features

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
