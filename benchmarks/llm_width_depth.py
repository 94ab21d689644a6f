"""Minitron's question on a real LLM: at the parameter count of SmolLM2-135M's 15-of-30-layer
cut, which student heals best under the same token-level KD budget: the depth cut, a
width-only student (all 30 layers, narrower MLPs, heads and residual stream), or a searched
mix of depth and width?

- **depth**: 15 layers, the teacher minus its least useful contiguous block (``keep: 15``,
  similarity; the student of ``benchmarks/llm_kd.py``).
- **width**: all 30 layers; the grid point of ``width`` (MLP neurons), ``heads`` (query
  heads per key/value group) and ``hidden`` (residual channels) under the depth cut's
  parameter count with the lowest loss on ``--select-blocks`` training blocks before any
  training.
- **searched**: the same choice over depth and width together (``keep`` from 15 to 30).

Every candidate is built from the teacher with ``distill.models.narrow`` (weights kept,
units ranked on 8 calibration blocks); the grid is filtered by its parameter count (within
``--band`` below the depth cut's), then scored by language-model loss on the selection
blocks (training blocks, never the held-out ones). The three chosen students are then
healed identically (token-level KD + CE, 0.5 / 0.5, as the best student of ``llm_kd.py``)
for each seed, and compared by held-out perplexity.

    python benchmarks/llm_width_depth.py                       # 3 seeds × 3 students
    python benchmarks/llm_width_depth.py --seeds 0 --steps 2   # a quick look

Writes ``benchmarks/results/llm_width_depth.md`` and ``.json`` (after every student: a
killed run rerun with the same settings trains only what it had not finished).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import torch
from classic_kd import earlier_results, mean_std
from llm_kd import held_out_metrics, run_seeds
from torch.utils.data import DataLoader, Subset

import distill
from distill import Objective, Term, losses, teachers
from distill.data.text import PackedText
from distill.methods.token_kd import token_kd_term
from distill.models import count_parameters
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir
from distill.models.narrow import narrowed
from distill.models.shrink import layers_by_similarity, student_from_teacher

ROOT = Path(__file__).parent
KEEPS = [15, 18, 21, 24, 27, 30]
WIDTHS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
HEADS = [2 / 3, 1.0]  # SmolLM2-135M: 3 query heads per key/value group
HIDDENS = [0.6, 0.7, 0.8, 0.9, 1.0]


def parameters_of(config: Any, keep: int, width: float, heads: float, hidden: float) -> int:
    """The parameter count of a Llama-style student (tied embeddings) without building it,
    as ``narrowed`` rounds each share."""
    d = max(1, round(hidden * config.hidden_size))
    groups = config.num_key_value_heads
    per_group = config.num_attention_heads // groups
    q_heads = groups * max(1, round(heads * per_group))
    head_dim = config.head_dim
    inner = max(1, round(width * config.intermediate_size))
    attention = 2 * d * q_heads * head_dim + 2 * d * groups * head_dim
    block = attention + 3 * d * inner + 2 * d
    return config.vocab_size * d + keep * block + d


def build(teacher, calibration, keep: int, width: float, heads: float, hidden: float):
    layers = layers_by_similarity(teacher, calibration, keep) if keep < 30 else keep
    student = student_from_teacher(teacher, keep=layers)
    return narrowed(student, calibration, width=width, heads=heads, hidden=hidden)


@torch.no_grad()
def selection_loss(model, blocks: dict[str, torch.Tensor]) -> float:
    model.eval()
    logits = model(input_ids=blocks["input_ids"]).logits.float()
    return float(
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks["labels"].flatten())
    )


def choose(teacher, calibration, selection, budget: int, band: float, keeps: list[int]) -> dict:
    """The grid point at ``keeps`` with the lowest selection loss among those within
    ``band`` below ``budget`` parameters (each scored once per run: ``SCORED``)."""
    config = teacher.config
    grid = [
        dict(keep=k, width=w, heads=h, hidden=d)
        for k, w, h, d in itertools.product(keeps, WIDTHS, HEADS, HIDDENS)
    ]
    fitting = [g for g in grid if (1 - band) * budget <= parameters_of(config, **g) <= budget]
    for point in fitting:
        key = tuple(point.values())
        if key not in SCORED:
            student = build(teacher, calibration, **point)
            assert count_parameters(student) == parameters_of(config, **point)
            loss = selection_loss(student, selection)
            SCORED[key] = {**point, "parameters": count_parameters(student), "selection_loss": loss}
            print("  candidate", SCORED[key], flush=True)
    scored = [SCORED[tuple(point.values())] for point in fitting]
    return min(scored, key=lambda s: s["selection_loss"]) | {"candidates": len(scored)}


SCORED: dict[tuple, dict] = {}


def heal(teacher, point: dict, calibration, seed: int, train, args) -> torch.nn.Module:
    """``point``'s student trained ``args.steps`` steps of token-level KD + CE (0.5 / 0.5);
    ``seed`` orders the blocks."""
    shape = {k: point[k] for k in ("keep", "width", "heads", "hidden")}
    student = build(teacher, calibration, **shape).train()
    terms = {
        "kd": token_kd_term(student, teacher, weight=0.5, temperature=1.0),
        "ce": Term(losses.cross_entropy, weight=0.5),
    }
    distill.Distiller(
        student, teachers.Module(teacher), Objective(**terms), lr=args.lr, seed=seed,
        progress=True, select_metric=None, cpu=args.device == "cpu", max_grad_norm=1.0,
    ).fit(DataLoader(train, batch_size=args.batch, shuffle=True), max_steps=args.steps)  # fmt: skip
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--band", type=float, default=0.05, help="below the budget, a share")
    parser.add_argument("--select-blocks", type=int, default=16)
    parser.add_argument("--eval-blocks", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "llm_width_depth.md")
    args = parser.parse_args()
    keys = ("steps", "batch", "seq_len", "lr", "band", "select_blocks", "eval_blocks", "device")
    saved = args.out.with_suffix(".json")
    results = earlier_results(
        saved, {"settings": {k: getattr(args, k) for k in keys}, "students": {}, "runs": {}}
    )
    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.to(args.device).eval()
    data = PackedText(
        [{"text": topics[k]} for k in sorted(topics)], tokenizer, seq_len=args.seq_len
    )
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held = DataLoader(Subset(data, order[: args.eval_blocks]), batch_size=args.batch)
    train = Subset(data, order[args.eval_blocks :])
    stack = lambda rows, keys: {k: torch.stack([train[i][k] for i in rows]) for k in keys}  # noqa: E731
    calibration = stack(range(8), ["input_ids"])
    selection = stack(range(8, 8 + args.select_blocks), ["input_ids", "labels"])
    budget = parameters_of(teacher.config, 15, 1.0, 1.0, 1.0)
    results.update(budget=budget, machine=f"{platform.machine()} CPU, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}")  # fmt: skip
    wanted = {"depth": [15], "width": [30], "searched": KEEPS}
    for name, keeps in wanted.items():
        if name not in results["students"]:
            print(f"choosing the {name} student", flush=True)
            if name == "depth":
                point = {"keep": 15, "width": 1.0, "heads": 1.0, "hidden": 1.0,
                         "parameters": budget, "candidates": 1}  # fmt: skip
                point["selection_loss"] = selection_loss(
                    build(teacher, calibration, 15, 1.0, 1.0, 1.0), selection
                )
            else:
                point = choose(teacher, calibration, selection, budget, args.band, keeps)
            results["students"][name] = point
            saved.write_text(json.dumps(results, indent=2))
    for seed, (name, point) in itertools.product(args.seeds, results["students"].items()):
        run_seeds(  # seed by seed, so that a stopped run has whole comparisons
            results["runs"].setdefault(name, {}),
            [seed],
            name,
            lambda seed, p=point: heal(teacher, p, calibration, seed, train, args),
            lambda student: held_out_metrics(student, teacher, held, args.device),
            lambda: saved.write_text(json.dumps(results, indent=2)),
        )
    args.out.write_text(markdown(results))
    print(markdown(results))


def healed(ppl: list[float], seconds: list[float]) -> str:
    """The held-out perplexity columns of a student's row (dashes before any seed ran)."""
    if not ppl:
        return "— | — | — |"
    shown = ", ".join(f"{x:.2f}" for x in ppl)
    return f"{mean_std(ppl, 1)} | {shown} | {statistics.mean(seconds):.0f} |"


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    seeds = sorted({int(k) for runs in results["runs"].values() for k in runs})
    lines = [
        "# SmolLM2-135M-Instruct → students at the 15-layer cut's size: depth, width, or both",
        "",
        f"`python benchmarks/llm_width_depth.py --seeds {' '.join(map(str, seeds))} --steps "
        f"{s['steps']}`. Budget: {results['budget']:,} parameters (15 of 30 layers, tied "
        f"embeddings). Width and searched students: the grid point within {s['band']:.0%} "
        f"below it with the lowest loss on {s['select_blocks']} training blocks before "
        f"training. Healing: {s['steps']} steps of {s['batch']} × {s['seq_len']} tokens, "
        "token-level KD + CE (0.5 / 0.5), AdamW lr "
        f"{s['lr']:g}; held-out perplexity on {s['eval_blocks']} blocks of CPython's help "
        f"topics; seeds {', '.join(map(str, seeds))}. {results['machine']}.",
        "",
        "| student | layers | MLP share | heads share | hidden share | parameters | loss "
        "before training | held-out perplexity | per seed | train time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, p in results["students"].items():
        runs = results["runs"].get(name, {})
        ppl = [runs[k]["perplexity"] for k in sorted(runs, key=int)]
        seconds = [runs[k]["train_seconds"] for k in runs]
        lines.append(
            f"| {name} | {p['keep']} | {p['width']:.2g} | {p['heads']:.2g} | {p['hidden']:.2g} "
            f"| {p['parameters']:,} | {p['selection_loss']:.3f} | " + healed(ppl, seconds)
        )
    depth = results["runs"].get("depth", {})
    for name in ("width", "searched"):
        runs = results["runs"].get(name, {})
        shared = sorted(set(runs) & set(depth), key=int)
        better = [k for k in shared if runs[k]["perplexity"] < depth[k]["perplexity"]]
        if shared:
            lines.append("")
            lines.append(
                f"The {name} student has a lower held-out perplexity than the depth cut on "
                f"{len(better)} of {len(shared)} seeds."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
