"""Low-rank factorization: a Linear or convolution layer replaced by two thinner ones
from its truncated SVD, then (in a recipe) distilled back from the original model.

For a weight ``W`` (out × in; a kxk convolution as out × in·k·k), ``W = U S Vᵀ`` and the
rank-r factors are ``A = √S_r V_rᵀ`` (r × in) and ``B = U_r √S_r`` (out × r), so
``B A`` is the best rank-r approximation of ``W`` (Eckart–Young). A Linear becomes
``Linear(in, r, bias=False)`` then ``Linear(r, out)``; a convolution becomes a kxk
convolution with r output channels (same stride, padding, dilation) then a 1x1 one
(Jaderberg et al. 2014; Denton et al. 2014). A layer is only factorized when that has
fewer parameters than the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

Conv = nn.Conv1d | nn.Conv2d


@dataclass
class Factorized:
    """One layer replaced: its module path, rank, and parameters before and after."""

    path: str
    rank: int
    full_rank: int
    parameters_before: int
    parameters_after: int


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """The smallest r whose singular values keep ``energy`` of Σ σ² (0 < energy <= 1)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    squared = singular_values.double().pow(2)
    kept = squared.cumsum(0) / squared.sum().clamp_min(1e-30)
    return int((kept < energy - 1e-12).sum()) + 1


def _matrix(layer: nn.Linear | Conv) -> Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).double()


def _factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def factorize_layer(layer: nn.Linear | Conv, rank: int) -> nn.Sequential:
    """``layer`` as two layers of rank ``rank`` (see the module docstring)."""
    weight = _matrix(layer)
    rank = max(1, min(rank, *weight.shape))
    first, second = _factors(weight, rank)
    dtype, device = layer.weight.dtype, layer.weight.device
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        a = nn.Linear(layer.in_features, rank, bias=False)
        b = nn.Linear(rank, layer.out_features, bias=has_bias)
        a.weight.data = first.to(dtype)
        b.weight.data = second.to(dtype)
    else:
        if layer.groups != 1:
            raise ValueError("grouped convolutions are not factorized")
        conv = type(layer)
        a = conv(
            layer.in_channels,
            rank,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        b = conv(rank, layer.out_channels, 1, bias=has_bias)
        a.weight.data = first.reshape(a.weight.shape).to(dtype)
        b.weight.data = second.reshape(b.weight.shape).to(dtype)
    if has_bias:
        b.bias.data = layer.bias.detach().clone()
    return nn.Sequential(a, b).to(device)


def _parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def factorize(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    skip: tuple[str, ...] = (),
    min_parameters: int = 1024,
) -> list[Factorized]:
    """Replace, in place, every Linear and ungrouped Conv1d/Conv2d of ``model`` by its
    rank-``rank`` factors, or the rank that keeps ``energy`` of the squared singular
    values; layers under a path in ``skip``, with fewer than ``min_parameters``
    parameters, or that would not shrink are left as they are. Returns what changed."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank= or energy=")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    changed: list[Factorized] = []
    targets = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
        and not any(path == s or path.startswith(s + ".") for s in skip)
        and getattr(module, "groups", 1) == 1
        and _parameters(module) >= min_parameters
    ]
    for path, layer in targets:
        weight = _matrix(layer)
        full = min(weight.shape)
        if energy is not None:
            r = rank_for_energy(torch.linalg.svdvals(weight), energy)
        else:
            r = min(rank, full)  # type: ignore[type-var]
        replacement = factorize_layer(layer, r)
        before, after = _parameters(layer), _parameters(replacement)
        if after >= before:
            continue
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, replacement)
        changed.append(Factorized(path, r, full, before, after))
    return changed
