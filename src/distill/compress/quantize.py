"""Quantization with torchao: quantization-aware training (fake-quantized Linear layers
trained, here against a full-precision teacher, then converted) and post-training
weight quantization where QAT is overkill.

Schemes (torchao configs; Linear layers only, as torchao's QAT covers Linear and
Embedding: convolutions stay in floating point):

- ``int8``: int8 weights per output channel, activations quantized to int8 per token at
  run time (``Int8DynamicActivationIntxWeightConfig``);
- ``int8_weight_only``: int8 weights per output channel, float activations
  (``IntxWeightOnlyConfig``);
- ``int4_weight_only``: int4 weights in groups of 32 along the input
  (``IntxWeightOnlyConfig``), for larger Linear layers.

QAT (``prepare_qat``, train, ``convert_qat``) simulates the scheme's rounding in the
forward pass with a straight-through gradient (Jacob et al., CVPR 2018), so the weights
learn to sit where rounding costs least; ``convert_qat`` then stores real integers, and
the converted model computes what the fake-quantized one did.
Quantized weights are torchao tensor subclasses; ``save_quantized`` writes their integer
data and scales as plain safetensors (the bytes a deployment ships) and
``load_quantized`` restores them into a freshly quantized copy of the architecture.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from distill.errors import MissingDependency

Scheme = Literal["int8", "int8_weight_only", "int4_weight_only"]
SCHEMES: tuple[str, ...] = ("int8", "int8_weight_only", "int4_weight_only")


def _torchao():
    try:
        import torchao  # noqa: F401
    except ImportError as error:
        raise MissingDependency(
            "quantization needs torchao: pip install 'distill[compress]'"
        ) from error


def base_config(scheme: Scheme):
    """The torchao post-training config of ``scheme``."""
    _torchao()
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "int8":
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8, weight_granularity=PerAxis(0)
        )
    if scheme == "int8_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if scheme == "int4_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {SCHEMES}")


def _linear_filter(skip: tuple[str, ...], scheme: Scheme):
    def keep(module: nn.Module, path: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        if scheme == "int4_weight_only" and module.in_features % 32:
            return False  # groups of 32 along the input
        return not any(path == s or path.startswith(s + ".") for s in skip)

    return keep


def quantizable_linears(model: nn.Module, scheme: Scheme = "int8", skip=()) -> list[str]:
    """Paths of the Linear layers ``scheme`` would quantize."""
    keep = _linear_filter(tuple(skip), scheme)
    return [path for path, module in model.named_modules() if keep(module, path)]


def prepare_qat(model: nn.Module, scheme: Scheme = "int8", skip=()) -> list[str]:
    """Swap the quantizable Linear layers for fake-quantized ones, in place; returns their
    paths (an error if there is none)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    paths = quantizable_linears(model, scheme, skip)
    if not paths:
        raise ValueError(
            f"no Linear layer to quantize with {scheme} (torchao quantizes Linear layers)"
        )
    quantize_(
        model, QATConfig(base_config(scheme), step="prepare"), _linear_filter(tuple(skip), scheme)
    )
    return paths


def convert_qat(model: nn.Module, scheme: Scheme = "int8") -> None:
    """Turn the fake-quantized layers into real quantized ones, in place."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(base_config(scheme), step="convert"))


def quantize_weights(model: nn.Module, scheme: Scheme = "int8_weight_only", skip=()) -> list[str]:
    """Post-training quantization of the quantizable Linear layers, in place."""
    from torchao.quantization import quantize_

    paths = quantizable_linears(model, scheme, skip)
    if paths:
        quantize_(model, base_config(scheme), _linear_filter(tuple(skip), scheme))
    return paths


def _flat(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters and persistent buffers as plain tensors, a tensor subclass
    (a quantized weight) as its inner tensors (``<name>:<inner>``); the tensors are the
    model's own, not copies, so writing into them changes the model."""
    flat: dict[str, Tensor] = {}
    for prefix, module in model.named_modules():
        owned = list(module._parameters.items()) + [
            (name, buffer)
            for name, buffer in module._buffers.items()
            if name not in module._non_persistent_buffers_set
        ]
        for name, value in owned:
            if value is None:
                continue
            key = f"{prefix}.{name}" if prefix else name
            if type(value) in (Tensor, nn.Parameter):
                flat[key] = value.data
                continue
            inner, _ = value.__tensor_flatten__()
            for attribute in inner:
                flat[f"{key}:{attribute}"] = getattr(value, attribute)
    return flat


def save_quantized(model: nn.Module, path: Path) -> int:
    """Write the model's integer weights, scales and float tensors as safetensors;
    returns the file's size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in _flat(model).items()}, str(path))
    return path.stat().st_size


@torch.no_grad()
def load_quantized(model: nn.Module, path: Path, scheme: Scheme, skip=()) -> nn.Module:
    """``model`` (the float architecture) quantized with ``scheme`` (and ``skip``, as when
    it was saved) and given the tensors ``save_quantized`` wrote."""
    quantize_weights(model, scheme, skip)
    saved = load_file(str(path))
    target = _flat(model)
    if set(saved) != set(target):
        missing, extra = set(target) - set(saved), set(saved) - set(target)
        raise ValueError(
            f"{path}: does not fit this architecture quantized with {scheme}: missing "
            f"{sorted(missing)[:4]}, unexpected {sorted(extra)[:4]}"
        )
    for name, value in target.items():
        value.copy_(saved[name])
    return model


@torch.no_grad()
def dequantized(model: nn.Module) -> nn.Module:
    """A float copy of a torchao-quantized ``model``: every quantized weight replaced by
    the float values it stands for (its integers times its scales), for float exporters."""
    copy_ = copy.deepcopy(model)
    for module in copy_.modules():
        for name, value in list(module._parameters.items()):
            if value is not None and type(value) not in (Tensor, nn.Parameter):
                module._parameters[name] = nn.Parameter(value.dequantize(), requires_grad=False)
    return copy_
