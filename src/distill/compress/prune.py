"""Pruning: unstructured global magnitude pruning with a gradual schedule, and structured
channel pruning that removes channels for real.

- **Unstructured** (``torch.nn.utils.prune``): the weights of every Linear and convolution
  compete in one pool; the smallest |w| are masked to zero. ``methods.GradualPruning`` raises the
  sparsity along Zhu & Gupta's cubic schedule (2017, "To prune, or not to prune"),
  ``s_t = s_f · (1 − (1 − t / n)³)``, during training, so the network (distilled from
  the unpruned model) adapts as it goes; ``make_permanent`` then bakes the zeros into the
  weights. The dense tensors keep their shapes: the real saving is in nonzero parameters
  (and in bytes once stored sparse or compressed), not in dense latency.
- **Structured** (Torch-Pruning's dependency graph, Fang et al., CVPR 2023): the channels
  with the smallest L2 norm are removed from each layer together with everything that
  depends on them (the next layer's inputs, batch norms, flattening into a Linear), so
  tensors shrink and the model is smaller and faster as it stands.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from distill.errors import MissingDependency

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prunable_weights(model: nn.Module, skip: Iterable[str] = ()) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every Linear/Conv1d/Conv2d not under a path in ``skip``."""
    skip = tuple(skip)
    return [
        (module, "weight")
        for path, module in model.named_modules()
        if isinstance(module, PRUNABLE)
        and not any(path == s or path.startswith(s + ".") for s in skip)
    ]


def _plain(tensor: Tensor) -> Tensor:
    """A plain tensor of the values: quantized (torchao) weights dequantized."""
    tensor = tensor.detach()
    return tensor if type(tensor) is Tensor else tensor.dequantize()


def sparsity(model: nn.Module, skip: Iterable[str] = ()) -> float:
    """Share of zeros among the prunable weights (masked or permanent)."""
    weights = [_plain(m.weight) for m, _ in prunable_weights(model, skip)]  # masked if attached
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters that are not zero: what an unstructured-pruned model really holds."""
    return sum(int((_plain(p) != 0).sum()) for p in model.parameters())


@torch.no_grad()
def magnitude_prune(model: nn.Module, target: float, skip: Iterable[str] = ()) -> float:
    """Raise the global sparsity of the prunable weights to ``target`` by masking the
    smallest |w| (masks stay attached, so pruned weights stay zero while training);
    returns the sparsity reached."""
    if not 0 <= target < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {target}")
    params = prunable_weights(model, skip)
    if not params:
        raise ValueError("the model has no Linear or convolution weight to prune")
    for module, name in params:  # the global pool is a flat view of every weight
        weight = getattr(module, name)
        if not weight.is_contiguous():
            weight.data = weight.data.contiguous()
    current = sparsity(model, skip)
    if target > current:
        # the amount is a share of the weights not pruned yet
        amount = (target - current) / (1 - current)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return sparsity(model, skip)


def make_permanent(model: nn.Module) -> None:
    """Remove the pruning masks, leaving zeros in the weights."""
    for module in model.modules():
        for name in list(getattr(module, "_forward_pre_hooks", {}).values()):
            if isinstance(name, prune.BasePruningMethod):
                prune.remove(module, name._tensor_name)


def cubic_sparsity(step: int, total: int, final: float, start: int = 0) -> float:
    """Zhu & Gupta's schedule: 0 at ``start``, ``final`` at ``total``, cubic in between."""
    if step <= start:
        return 0.0
    progress = min(1.0, (step - start) / max(1, total - start))
    return final * (1 - (1 - progress) ** 3)


def prune_channels(
    model: nn.Module,
    example: Tensor,
    ratio: float,
    skip: Iterable[str] = (),
    round_to: int | None = None,
) -> tuple[int, int]:
    """Remove ``ratio`` of the channels (L2 magnitude) of every prunable layer except the
    output layer and those under ``skip``, with Torch-Pruning's dependency graph, in
    place; returns the parameter counts (before, after)."""
    try:
        import torch_pruning as tp
    except ImportError as error:
        raise MissingDependency(
            "structured channel pruning needs torch-pruning: pip install 'distill[compress]'"
        ) from error
    if not 0 < ratio < 1:
        raise ValueError(f"channel pruning ratio must be in (0, 1), got {ratio}")
    skip = tuple(skip)
    layers = [m for m, _ in prunable_weights(model)]
    output = layers[-1] if layers else None
    ignored = [m for m in layers if m is output] + [
        m
        for path, m in model.named_modules()
        if any(path == s or path.startswith(s + ".") for s in skip)
    ]
    before = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=round_to,
    )
    pruner.step()
    model.train(was_training)
    return before, sum(p.numel() for p in model.parameters())
