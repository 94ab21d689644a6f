"""A student as a speculative-decoding draft: how fast the target generates with it.

Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) lets a small draft propose
tokens that the target checks in one forward pass; the output follows the target's
distribution exactly (greedy: the same text), and the speed-up depends on how many draft
tokens the target accepts. DistillSpec (Zhou et al., ICLR 2024) distils drafts for that
acceptance. ``assisted_generation`` times Hugging Face's assisted generation
(``generate(..., assistant_model=draft)``) against the target alone on the same prompts
and counts the target's forward passes, so the measured acceptance length is the number of
tokens each target pass yields (1 for the target alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


@contextmanager
def forward_calls(model: nn.Module) -> Iterator[list[int]]:
    """Count ``model``'s forward passes while the block runs (``counter[0]``)."""
    counter = [0]
    handle = model.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    try:
        yield counter
    finally:
        handle.remove()


@torch.inference_mode()
def decode(
    target: nn.Module,
    prompts: Sequence[Tensor],
    *,
    draft: nn.Module | None = None,
    do_sample: bool = False,
    new_tokens: int = 64,
    seed: int = 0,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """Generate ``new_tokens`` after each prompt (one at a time: assisted generation takes
    batches of one) with the target alone or with ``draft`` as its assistant; the outputs,
    seconds, tokens and the target's forward passes."""
    outputs, seconds, calls = [], 0.0, 0
    settings: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_token_id,
    }
    if do_sample:
        settings.update(temperature=1.0, top_k=0, top_p=1.0)
    if draft is not None:
        settings["assistant_model"] = draft
    for index, prompt in enumerate(prompts):
        torch.manual_seed(seed + index)
        ids = prompt.reshape(1, -1).to(next(target.parameters()).device)
        with forward_calls(target) as counter:
            started = time.perf_counter()
            out = target.generate(ids, attention_mask=torch.ones_like(ids), **settings)
            seconds += time.perf_counter() - started
        calls += counter[0]
        outputs.append(out[0, ids.shape[1] :].cpu())
    tokens = sum(int(o.numel()) for o in outputs)
    return {"outputs": outputs, "seconds": seconds, "tokens": tokens, "target_calls": calls}


def assisted_generation(
    target: nn.Module,
    draft: nn.Module,
    prompts: Sequence[Tensor],
    *,
    new_tokens: int = 64,
    seed: int = 0,
    pad_token_id: int | None = None,
    draft_tokens: int | None = None,
) -> dict[str, dict[str, float]]:
    """Greedy and sampled (temperature 1) generation, target alone against target with
    ``draft``, back to back after one warm-up each: tokens per second, the speed-up, the
    tokens per target forward pass (the acceptance length plus the target's own token)
    and, greedy, whether the texts are the same (they must be). ``draft_tokens`` sets how
    many tokens the draft proposes per round (default: transformers' heuristic schedule,
    which also stops a round when the draft's confidence falls below a threshold)."""
    target.eval()
    draft.eval()
    if draft_tokens is not None:  # exactly that many, not stopped by the draft's confidence
        draft.generation_config.num_assistant_tokens = draft_tokens
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0
    results: dict[str, dict[str, float]] = {}
    for mode, sample in (("greedy", False), ("sampled", True)):
        common = {
            "do_sample": sample,
            "new_tokens": new_tokens,
            "seed": seed,
            "pad_token_id": pad_token_id,
        }
        decode(target, prompts[:1], **{**common, "new_tokens": 4})  # warm-up
        decode(target, prompts[:1], draft=draft, **{**common, "new_tokens": 4})
        alone = decode(target, prompts, **common)
        helped = decode(target, prompts, draft=draft, **common)
        row = {
            "target_tokens_per_s": alone["tokens"] / alone["seconds"],
            "assisted_tokens_per_s": helped["tokens"] / helped["seconds"],
            "speedup": alone["seconds"] / helped["seconds"] * helped["tokens"] / alone["tokens"],
            "tokens_per_target_call": helped["tokens"] / max(1, helped["target_calls"]),
            "target_calls_alone": alone["target_calls"],
            "target_calls_assisted": helped["target_calls"],
        }
        if not sample:
            row["same_text"] = float(
                all(
                    torch.equal(a, b)
                    for a, b in zip(alone["outputs"], helped["outputs"], strict=True)
                )
            )
        results[mode] = row
    return results


def describe_speculative(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) lines for a terminal, of a draft's measured result (acceptance,
    agreement, and ``assisted_generation``'s rows flattened as ``<mode>_<key>``)."""
    return [
        ("α, expected acceptance (sampling, 1 − TVD)", f"{result['acceptance']:.3f}"),
        ("top-1 agreement (greedy acceptance)", f"{result['teacher_agreement']:.3f}"),
        *[
            (f"{mode}: tokens per teacher pass", f"{result[f'{mode}_tokens_per_target_call']:.2f}")
            for mode in ("greedy", "sampled")
        ],
        *[
            (
                f"{mode}: tokens/s teacher alone → with draft",
                f"{result[f'{mode}_target_tokens_per_s']:.1f} → "
                f"{result[f'{mode}_assisted_tokens_per_s']:.1f} "
                f"({result[f'{mode}_speedup']:.2f}×)",
            )
            for mode in ("greedy", "sampled")
        ],
    ]
