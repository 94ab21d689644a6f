"""Models by name: ``zoo:<name>``, ``torchvision:<name>``, ``timm:<name>``, ``hf:<id or dir>``.

``zoo`` holds small MLP/CNN teachers and students (``mlp``, ``cnn``) for Fashion-MNIST and
MNIST-1D and the CIFAR models of the standard KD tables (see ``cifar.py``). A model built
from a spec may then load weights from a safetensors file (``checkpoint=``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from distill.dependencies import optional_import
from distill.errors import ModelArgumentError, ModelError
from distill.models.cifar import CIFAR_MODELS
from distill.models.small import CNN, MLP

SOURCES = ("zoo", "torchvision", "timm", "hf")
# what a pretrained hf: image classifier's from_pretrained may be given from a recipe
HF_PRETRAINED_ARGS = {"revision", "dtype"}


def _cifar(make: Callable[[int], nn.Module], in_shape: Sequence[int], n: int) -> nn.Module:
    if tuple(in_shape) != (3, 32, 32):
        raise ModelError(f"the CIFAR zoo models take (3, 32, 32) inputs, got {tuple(in_shape)}")
    return make(n)


def _zoo() -> dict[str, Callable[..., nn.Module]]:
    small: dict[str, Callable[..., nn.Module]] = {
        "mlp": lambda in_shape, n, **kw: MLP(math.prod(in_shape), n, in_shape=in_shape, **kw),
        "cnn": lambda in_shape, n, **kw: CNN(in_shape, n, **kw),
    }
    cifar = {name: functools.partial(_cifar, make) for name, make in CIFAR_MODELS.items()}
    return {**small, **cifar}


ZOO = _zoo()


def build_model(
    spec: str,
    num_classes: int,
    in_shape: Sequence[int],
    args: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> nn.Module:
    """Build the model that ``spec`` names, for ``num_classes`` outputs and inputs of shape
    ``in_shape`` (without the batch dimension)."""
    args = dict(args or {})
    source, sep, name = spec.partition(":")
    if not sep or source not in SOURCES:
        raise ModelError(
            f"model {spec!r} must be '<source>:<name>' with source one of {', '.join(SOURCES)} "
            f"(zoo models: {', '.join(sorted(ZOO))})"
        )
    if source == "zoo":
        if name not in ZOO:
            raise ModelError(f"no zoo model {name!r}; choose one of {', '.join(sorted(ZOO))}")
        try:
            return ZOO[name](tuple(in_shape), num_classes, **args)
        except (TypeError, ValueError) as error:  # an unknown or impossible argument
            raise ModelArgumentError(f"zoo:{name} args {args}: {error}") from error
    if source == "torchvision":
        tv = optional_import("torchvision", f"model {spec!r}")
        if not pretrained:
            return tv.models.get_model(name, weights=None, num_classes=num_classes, **args)
        # ImageNet weights come with a 1000-class head: a new one for this data's classes
        return replace_head(tv.models.get_model(name, weights="DEFAULT", **args), num_classes)
    if source == "timm":
        timm = optional_import("timm", f"model {spec!r}")
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **args)
    refused = sorted(k for k in args if "remote" in k or "code" in k)
    if refused:
        raise ModelError(
            f"model {spec}: args {refused}: distill does not run code shipped with a model; "
            "use an architecture transformers knows"
        )
    transformers = optional_import("transformers", f"model {spec!r}", "pip install 'distill[llm]'")
    model_cls = transformers.AutoModelForImageClassification
    if pretrained or Path(name).is_dir():
        unknown = sorted(set(args) - HF_PRETRAINED_ARGS)
        if unknown:
            raise ModelError(
                f"model {spec}: args {unknown} are not taken; pretrained hf models take "
                f"{', '.join(sorted(HF_PRETRAINED_ARGS))}"
            )
        return model_cls.from_pretrained(
            name, num_labels=num_classes, ignore_mismatched_sizes=True, **args
        )
    config = transformers.AutoConfig.from_pretrained(name, num_labels=num_classes, **args)
    return model_cls.from_config(config)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """``model`` with its classifier (its last ``Linear``, or a 1×1 convolution as in
    SqueezeNet) replaced by a new one for ``num_classes`` outputs, unless it has them."""
    path, head = next(
        (
            (name, module)
            for name, module in reversed(list(model.named_modules()))
            if isinstance(module, nn.Linear)
            or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1))
        ),
        (None, None),
    )
    if head is None or path is None:
        raise ModelError(
            f"{type(model).__name__}: no Linear classifier to give {num_classes} outputs"
        )
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes:
            return model
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        if head.out_channels == num_classes:
            return model
        new = nn.Conv2d(head.in_channels, num_classes, 1)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["CNN", "MLP", "SOURCES", "ZOO", "build_model", "count_parameters", "replace_head"]
