"""Forward + backward time and peak memory of token-level KD through the LM heads.

Methods, measured side by side in one run on the same inputs:
- ``floor``: only the four LM-head matrix products any exact method must do (student and
  teacher logits, the student's hidden-state and head gradients), no softmax;
- ``naive``: full (tokens × vocab) logits for both models, then ``losses.kl``, autograd;
- ``distill``: ``distill.losses.tokens.lm_head_kd`` (chunks of ``--chunk`` tokens);
- ``distill-compiled``: the same with ``compile=True`` (each chunk's softmaxes, divergence
  and their backward as ``torch.compile``d kernels; needs a C compiler on the CPU);
- ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` when it is installed (CUDA only).

Memory is the peak beyond the inputs: ``torch.cuda.max_memory_allocated`` on a GPU; on the
CPU each method runs in its own process and reports its peak resident set size minus the
one measured after its inputs were made.

    python benchmarks/token_kd_loss.py                 # CPU, small shapes
    python benchmarks/token_kd_loss.py --device cuda   # the issue's GPU shapes, bf16

Writes ``benchmarks/results/token_kd_loss_<device>.md`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from distill.losses import kl
from distill.losses.tokens import lm_head_kd

ROOT = Path(__file__).parent
GPU_SHAPES = [(4096, 2048, 4096, 128256), (16384, 2048, 4096, 128256)]
CPU_SHAPES = [
    (1024, 256, 512, 32000),
    (4096, 256, 512, 32000),
    (1024, 1024, 2048, 32000),  # hidden sizes where the matmuls dominate, as on a GPU
    (4096, 1024, 2048, 32000),
]


def make_inputs(shape, device, dtype, seed=0):
    tokens, hs, ht, vocab = shape
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    s_h = rand(tokens, hs).requires_grad_()
    s_w = rand(vocab, hs, scale=hs**-0.5).requires_grad_()
    return s_h, s_w, rand(tokens, ht), rand(vocab, ht, scale=ht**-0.5)


def run_floor(s_h, s_w, t_h, t_w, chunk):
    with torch.no_grad():
        s = s_h @ s_w.T
        t_h @ t_w.T
        s @ s_w  # grad of the hidden states: (tokens × V)(V × H)
        s.T @ s_h  # grad of the head: (V × tokens)(tokens × H)


def run_naive(s_h, s_w, t_h, t_w, chunk):
    with torch.no_grad():
        t = t_h @ t_w.T
    kl(s_h @ s_w.T, t).backward()


def run_distill(s_h, s_w, t_h, t_w, chunk):
    lm_head_kd(s_h, s_w, t_h, t_w, chunk_size=chunk).backward()


def run_distill_compiled(s_h, s_w, t_h, t_w, chunk):
    lm_head_kd(s_h, s_w, t_h, t_w, chunk_size=chunk, compile=True).backward()


def run_liger(s_h, s_w, t_h, t_w, chunk):
    from liger_kernel.transformers import LigerFusedLinearJSDLoss

    loss = LigerFusedLinearJSDLoss(jsd_beta=0.0)  # beta 0: forward KL
    loss(s_h, s_w, t_h, t_w).backward()


METHODS = {
    "floor": run_floor,
    "naive": run_naive,
    "distill": run_distill,
    "distill-compiled": run_distill_compiled,
    "liger": run_liger,
}


def available(method, device):
    if method == "distill-compiled":  # inductor writes C++ on the CPU, Triton on a GPU
        return device == "cuda" or shutil.which("cc") is not None
    if method != "liger":
        return True
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return device == "cuda"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(method, shape, device, dtype, chunk, repeats):
    """(median seconds, peak bytes beyond the inputs) for one method at one shape."""
    inputs = make_inputs(shape, device, dtype)
    fn = METHODS[method]
    # the CPU peak (ru_maxrss) never goes down: its base is taken before any work
    cpu_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn(*inputs, chunk)  # warm-up (and compilation, where a method compiles)
    for t in inputs[:2]:
        t.grad = None
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = cpu_base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*inputs, chunk)
        sync(device)
        times.append(time.perf_counter() - start)
        for t in inputs[:2]:
            t.grad = None
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return statistics.median(times), peak


def measure_in_process(method, shape, device, dtype_name, chunk, repeats):
    """CPU peak memory needs a fresh process per method: ru_maxrss never goes down."""
    if device == "cuda":
        return measure(method, shape, device, getattr(torch, dtype_name), chunk, repeats)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            method,
            "--shape",
            *map(str, shape),
            "--dtype",
            dtype_name,
            "--chunk",
            str(chunk),
            "--repeats",
            str(repeats),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, peak


def table(rows, device, dtype_name, chunk, machine):
    lines = [
        f"# Token-level KD loss, forward + backward ({device}, {dtype_name})",
        "",
        f"Machine: {machine}. Chunk: {chunk} tokens. Time: median of the repeats; memory: "
        "peak beyond the inputs. Ratios are to the four-matmul floor (time) and to naive "
        "PyTorch (memory), measured in the same run.",
        "",
        f"Command: `python benchmarks/token_kd_loss.py --device {device}`",
        "",
        "| tokens, H_s, H_t, V | method | time (ms) | × floor | peak memory (MiB) | × naive |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for shape, results in rows:
        floor = results["floor"][0]
        naive_mem = results.get("naive", (0, 0))[1]
        for method, (seconds, peak) in results.items():
            mem_ratio = f"{peak / naive_mem:.2f}" if naive_mem > 0 and method != "floor" else ""
            lines.append(
                f"| {', '.join(map(str, shape))} | {method} | {1000 * seconds:.1f} | "
                f"{seconds / floor:.2f} | {'' if method == 'floor' else f'{peak / 2**20:,.0f}'} "
                f"| {mem_ratio} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=4, action="append")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.one:
        seconds, peak = measure(
            args.one,
            tuple(args.shape[0]),
            args.device,
            getattr(torch, dtype_name),
            args.chunk,
            args.repeats,
        )
        print(json.dumps([seconds, peak]))
        return
    shapes = (
        [tuple(s) for s in args.shape]
        if args.shape
        else (GPU_SHAPES if args.device == "cuda" else CPU_SHAPES)
    )
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    ) + f", torch {torch.__version__}"
    rows = []
    for shape in shapes:
        results = {}
        for method in METHODS:
            if available(method, args.device):
                results[method] = measure_in_process(
                    method, shape, args.device, dtype_name, args.chunk, args.repeats
                )
                print(shape, method, results[method], flush=True)
        rows.append((shape, results))
    text = table(rows, args.device, dtype_name, args.chunk, machine)
    out = ROOT / "results" / f"token_kd_loss_{args.device}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
