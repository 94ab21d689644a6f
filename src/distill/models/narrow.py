"""Minitron-style width pruning of decoder LLMs, in place, weights kept (Muralidharan et al.
2024, "Compact Language Models via Pruning and Knowledge Distillation"): each axis keeps the
units that matter most by their activations on calibration text.

- MLP neurons (``narrow_mlps``): the mean absolute activation entering ``down_proj``.
- Attention heads (``narrow_heads``): the mean L2 norm of each query head's output (the
  input of ``o_proj``, one ``head_dim`` slice per head). With grouped-query attention,
  query head h reads key/value head h // (heads per group), so every group keeps the same
  number of its own query heads and the groups stay whole.
- Hidden channels (``narrow_hidden``): the mean absolute activation of each channel at the
  output of every RMSNorm (the blocks' two and the final one), summed: Minitron's
  embedding-channel importance. A channel leaves the embeddings, every projection that
  reads or writes the residual stream, every norm and the LM head (kept tied to the
  embeddings when it was).

Llama-style blocks (Llama, Mistral, Qwen, SmolLM): ``self_attn.{q,k,v,o}_proj``, a gated
``mlp`` (``gate_proj``, ``up_proj``, ``down_proj``), ``input_layernorm`` and
``post_attention_layernorm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from distill.models.shrink import layer_stack

GATED_MLP = ("gate_proj", "up_proj", "down_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
NOT_INPUTS = ("labels", "loss_mask", "example_id")


def _share(keep: float, what: str) -> None:
    if not 0 < keep <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {keep}")


def _calibrate(model: nn.Module, calibration: dict[str, Tensor], hooks: list[Callable]) -> None:
    """One forward of ``model`` on ``calibration`` (eval mode) with ``hooks`` registered,
    each a function that registers one hook and returns its handle."""
    handles = [register() for register in hooks]
    was_training = model.training
    model.eval()
    try:
        model(**{k: v for k, v in calibration.items() if k not in NOT_INPUTS})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _blocks(model: nn.Module, parts: tuple[str, ...], where: str) -> list[nn.Module]:
    """Each block's ``where`` module (``mlp`` or ``self_attn``), checked to have ``parts``."""
    _, layers = layer_stack(model)
    found = [getattr(layer, where, None) for layer in layers]
    if not all(m is not None and all(hasattr(m, p) for p in parts) for m in found):
        raise ValueError(
            f"width pruning knows Llama-style blocks ({where}: {', '.join(parts)}; Llama, "
            f"Mistral, Qwen, SmolLM); {type(model).__name__} has other blocks"
        )
    return found


@torch.no_grad()
def narrow_mlps(model: nn.Module, keep: float, calibration: dict[str, Tensor]) -> nn.Module:
    """Every block's MLP keeps the ``keep`` share of its intermediate neurons with the
    largest mean absolute activation entering ``down_proj`` on ``calibration``."""
    _share(keep, "width (the share of the MLP neurons kept)")
    mlps = _blocks(model, GATED_MLP, "mlp")
    scores = [torch.zeros(m.down_proj.in_features) for m in mlps]

    def scorer(k: int) -> Callable:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            scores[k] += args[0].detach().abs().flatten(0, -2).float().mean(0).cpu()

        return lambda: mlps[k].down_proj.register_forward_pre_hook(hook)

    _calibrate(model, calibration, [scorer(k) for k in range(len(mlps))])
    width = max(1, round(keep * mlps[0].down_proj.in_features))
    for mlp, score in zip(mlps, scores, strict=True):
        kept = score.topk(width).indices.sort().values
        mlp.gate_proj = rows(mlp.gate_proj, kept)
        mlp.up_proj = rows(mlp.up_proj, kept)
        mlp.down_proj = columns(mlp.down_proj, kept)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "intermediate_size"):
        config.intermediate_size = width
    return model


@torch.no_grad()
def narrow_heads(model: nn.Module, keep: float, calibration: dict[str, Tensor]) -> nn.Module:
    """Every block keeps the ``keep`` share of the query heads of each key/value group (at
    least one) with the largest mean output norm on ``calibration``."""
    _share(keep, "heads (the share of each key/value group's query heads kept)")
    attentions = _blocks(model, ATTENTION, "self_attn")
    head_dim = attentions[0].head_dim
    heads = attentions[0].q_proj.out_features // head_dim
    groups = attentions[0].k_proj.out_features // head_dim
    per_group = heads // groups
    scores = [torch.zeros(heads) for _ in attentions]

    def scorer(k: int) -> Callable:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            out = args[0].detach().float().unflatten(-1, (heads, head_dim))
            scores[k] += out.norm(dim=-1).flatten(0, -2).mean(0).cpu()

        return lambda: attentions[k].o_proj.register_forward_pre_hook(hook)

    _calibrate(model, calibration, [scorer(k) for k in range(len(attentions))])
    kept_per_group = max(1, round(keep * per_group))
    for attention, score in zip(attentions, scores, strict=True):
        best = score.view(groups, per_group).topk(kept_per_group, dim=1).indices.sort().values
        kept_heads = (best + per_group * torch.arange(groups)[:, None]).flatten()
        kept = (kept_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
        attention.q_proj = rows(attention.q_proj, kept)
        attention.o_proj = columns(attention.o_proj, kept)
        attention.num_key_value_groups = kept_per_group
        if hasattr(attention, "num_heads"):  # older transformers
            attention.num_heads = groups * kept_per_group
    config = getattr(model, "config", None)
    if config is not None:
        config.head_dim = head_dim  # explicit: no longer hidden_size / heads
        config.num_attention_heads = groups * kept_per_group
    return model


@torch.no_grad()
def narrow_hidden(model: nn.Module, keep: float, calibration: dict[str, Tensor]) -> nn.Module:
    """The model keeps the ``keep`` share of its hidden (residual-stream) channels with the
    largest summed mean absolute RMSNorm output on ``calibration``."""
    _share(keep, "hidden (the share of the residual channels kept)")
    attentions = _blocks(model, ATTENTION, "self_attn")
    mlps = _blocks(model, GATED_MLP, "mlp")
    _, layers = layer_stack(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    embed, final = getattr(inner, "embed_tokens", None), getattr(inner, "norm", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    if embed is None or final is None or head is None:
        raise ValueError(
            f"hidden-channel pruning knows Llama-style models (model.embed_tokens, model.norm, "
            f"an LM head); {type(model).__name__} has another layout"
        )
    norms.append(final)
    score = torch.zeros(embed.embedding_dim)

    def scorer(norm: nn.Module) -> Callable:
        def hook(_module: nn.Module, _args: tuple, out: Tensor) -> None:
            score.add_(out.detach().abs().flatten(0, -2).float().mean(0).cpu())

        return lambda: norm.register_forward_hook(hook)

    _calibrate(model, calibration, [scorer(n) for n in norms])
    width = max(1, round(keep * embed.embedding_dim))
    kept = score.topk(width).indices.sort().values
    tied = head.weight is embed.weight
    new_embed = nn.Embedding(embed.num_embeddings, width, padding_idx=embed.padding_idx)
    new_embed.to(embed.weight.device, embed.weight.dtype)
    new_embed.weight.copy_(embed.weight[:, kept.to(embed.weight.device)])
    inner.embed_tokens = new_embed
    for norm in norms:
        norm.weight = nn.Parameter(norm.weight[kept.to(norm.weight.device)].clone())
    for attention in attentions:
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attention, name, columns(getattr(attention, name), kept))
        attention.o_proj = rows(attention.o_proj, kept)
    for mlp in mlps:
        mlp.gate_proj = columns(mlp.gate_proj, kept)
        mlp.up_proj = columns(mlp.up_proj, kept)
        mlp.down_proj = rows(mlp.down_proj, kept)
    new_head = columns(head, kept)
    if tied:
        new_head.weight = new_embed.weight
    base.set_output_embeddings(new_head)
    config = getattr(model, "config", None)
    if config is not None:
        config.head_dim = attentions[0].head_dim  # explicit: no longer hidden_size / heads
        config.hidden_size = width
    return model


def narrowed(
    model: nn.Module,
    calibration: dict[str, Tensor],
    *,
    width: float = 1.0,
    heads: float = 1.0,
    hidden: float = 1.0,
) -> nn.Module:
    """``model`` narrowed in place along each axis kept below 1: MLP neurons (``width``),
    then query heads (``heads``), then residual channels (``hidden``), each ranked on
    ``calibration`` by the model as the earlier axes left it. Raises ``ValueError`` naming
    the axis (``width``, ``heads`` or ``hidden``) that cannot be applied."""
    for name, share, narrow in (
        ("width", width, narrow_mlps),
        ("heads", heads, narrow_heads),
        ("hidden", hidden, narrow_hidden),
    ):
        if share != 1.0:
            try:
                narrow(model, share, calibration)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
    return model


def rows(linear: nn.Linear, kept: Tensor) -> nn.Linear:
    """``linear`` keeping the output units ``kept`` (rows of its weight), weights copied."""
    weight = linear.weight
    new = nn.Linear(linear.in_features, len(kept), bias=linear.bias is not None)
    new.to(weight.device, weight.dtype)
    new.weight.copy_(weight[kept.to(weight.device)])
    if linear.bias is not None:
        new.bias.copy_(linear.bias[kept.to(weight.device)])
    return new


def columns(linear: nn.Linear, kept: Tensor) -> nn.Linear:
    """``linear`` reading only the inputs ``kept`` (columns of its weight), weights copied."""
    weight = linear.weight
    new = nn.Linear(len(kept), linear.out_features, bias=linear.bias is not None)
    new.to(weight.device, weight.dtype)
    new.weight.copy_(weight[:, kept.to(weight.device)])
    if linear.bias is not None:
        new.bias.copy_(linear.bias)
    return new
