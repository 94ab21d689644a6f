"""Everything distill measures on a GPU, in one call of at most 9 minutes.

1. Token-level KD loss, forward + backward, bf16, vocabulary 128,256, student hidden
   2,048, teacher hidden 4,096, at 4,096 and 16,384 tokens, forward KL and JSD(0.5):
   naive full-logit PyTorch, distill's chunked ``lm_head_kd`` (eager and compiled) and
   Liger-Kernel's ``LigerFusedLinearJSDLoss`` when it is installed. Each in its own process
   (a method that recompiles for a new shape in the same process is known to crash). Time,
   peak memory beyond the inputs, and the ratio to the matmul floor: the four LM-head
   products any exact method does (student and teacher logits, the student's hidden-state
   and head gradients), 2 · tokens · V · (3 H_s + H_t) FLOPs, at the bf16 matmul throughput
   measured on the same GPU in the same call.
2. Classic KD step, ResNet-50 → ResNet-18 (torchvision, random weights), batch 256 of
   224 × 224, bf16 autocast, channels-last: the plain student step, the teacher's forward,
   a hand-written KD step, distill's KD step, and distill against a dense teacher cache
   (with its per-batch input check, and without).
3. ``recipes/llm_token_kd.yaml``'s models at a GPU budget: a Llama of SmolLM2-135M's shape
   (random weights: the GGUF is not on that machine) teaching a 15-of-30-layer copy of
   itself, bf16, batch 16 × 512, 200 steps: tokens per second and peak memory with labels
   only, with token-level KD against the live teacher, and against a top-64 cache.

What it cannot measure on one GPU: FSDP or DDP across processes (one GPU holds one
process's model); the table says so.

    python benchmarks/gpu_suite.py           # on a CUDA GPU: writes results/gpu.md
    python benchmarks/gpu_suite.py --tiny    # anywhere, small shapes, float32, seconds

On the lent H200 machine (torch, torchvision and Accelerate are installed there, pydantic
is not), from the repository root, after ``benchmarks/gpu_wheels.sh`` here:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT/gpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).parent
BUDGET_S = 9 * 60
IN_PROCESS = False  # --in-process: every case in this process (the tests' quick path)
WHERE = {False: "each method and shape in its own process", True: "all in one process"}


# -- shared -------------------------------------------------------------------------------


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def memory_base() -> int:
    if not torch.cuda.is_available():
        return 0
    sync()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_beyond(base: int) -> float | None:
    """GiB allocated at the peak beyond ``base`` (None on the CPU: not measured)."""
    if not torch.cuda.is_available():
        return None
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- 1. the token-level KD loss -----------------------------------------------------------


def token_shapes(tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"tokens": [64], "hs": 32, "ht": 64, "vocab": 1000, "dtype": "float32"}
    return {"tokens": [4096, 16384], "hs": 2048, "ht": 4096, "vocab": 128256, "dtype": "bfloat16"}


def case_matmul(params: dict[str, Any]) -> dict[str, Any]:
    """The matmul throughput (TFLOP/s) in the loss's dtype: the floor's unit."""
    n = params["n"]
    dtype = getattr(torch, params["dtype"])
    a = torch.randn(n, n, device=device(), dtype=dtype)
    b = torch.randn(n, n, device=device(), dtype=dtype)
    seconds = timed(lambda: a @ b, repeats=10, warmup=3)
    return {"tflops": 2 * n**3 / seconds / 1e12}


def case_token_loss(params: dict[str, Any]) -> dict[str, Any]:
    from distill.losses import jsd, kl
    from distill.losses.tokens import lm_head_kd

    tokens, hs, ht, vocab = params["tokens"], params["hs"], params["ht"], params["vocab"]
    dtype = getattr(torch, params["dtype"])
    method, divergence = params["method"], params["divergence"]
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device(), dtype=dtype)

    s_h = rand(tokens, hs).requires_grad_()
    s_w = rand(vocab, hs, scale=hs**-0.5).requires_grad_()
    t_h, t_w = rand(tokens, ht), rand(vocab, ht, scale=ht**-0.5)
    base = memory_base()

    if method == "naive":
        measure = kl if divergence == "kl" else (lambda s, t: jsd(s, t, beta=0.5))

        def run():
            with torch.no_grad():
                teacher = t_h @ t_w.T
            measure(s_h @ s_w.T, teacher).backward()

    elif method.startswith("distill"):
        compiled = method == "distill-compiled"
        backend = True if torch.cuda.is_available() else "aot_eager"  # no C compiler needed

        def run():
            lm_head_kd(
                s_h, s_w, t_h, t_w, divergence=divergence, beta=0.5,
                compile=backend if compiled else False,
            ).backward()  # fmt: skip

    elif method == "liger":
        from liger_kernel.transformers import LigerFusedLinearJSDLoss

        loss = LigerFusedLinearJSDLoss(jsd_beta=0.0 if divergence == "kl" else 0.5)

        def run():
            loss(s_h, s_w, t_h, t_w).backward()

    else:
        raise ValueError(f"unknown method {method}")

    def step():
        run()
        s_h.grad = s_w.grad = None

    seconds = timed(step, repeats=params["repeats"], warmup=2)  # two: compile, then settle
    return {"seconds": seconds, "peak_gib": peak_beyond(base)}


# -- 2. the classic KD step -------------------------------------------------------------


def classic_models(tiny: bool):
    from distill.models import build_model

    if tiny:
        teacher = build_model("zoo:cnn", 10, (3, 32, 32), {"channels": [8, 16], "hidden": 32})
        return teacher, build_model("zoo:mlp", 10, (3, 32, 32), {"hidden": 16}), (3, 32, 32)
    import torchvision

    teacher, student = torchvision.models.resnet50(), torchvision.models.resnet18()
    return teacher, student, (3, 224, 224)


class Stopwatch:
    """A distill callback: the time from the end of step ``start`` to the end of the run."""

    all_ranks = True

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.marks = start, end, {}

    def on_step_end(self, distiller, step, logs):
        if step in (self.start, self.end):
            sync()
            self.marks[step] = time.perf_counter()

    def on_evaluate(self, distiller, step, metrics):
        pass

    def seconds_per_step(self) -> float:
        return (self.marks[self.end] - self.marks[self.start]) / (self.end - self.start)


def case_classic(params: dict[str, Any]) -> dict[str, Any]:
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import distill
    from distill import Objective, Term, losses, teachers
    from distill.cache import Layout, build_cache

    tiny, variant = params["tiny"], params["variant"]
    batch, steps, warm = (16, 6, 2) if tiny else (256, 30, 5)
    on_gpu = torch.cuda.is_available()
    bf16 = torch.bfloat16 if on_gpu else None
    layout = torch.channels_last if on_gpu else torch.contiguous_format
    torch.manual_seed(0)
    teacher, student, shape = classic_models(tiny)
    teacher = teacher.to(device(), memory_format=layout).eval().requires_grad_(False)
    student = student.to(device(), memory_format=layout)
    images = torch.randn(2 * batch, *shape).to(device(), memory_format=layout)
    labels = torch.randint(0, 10, (2 * batch,), device=device())
    ids = torch.arange(2 * batch)
    halves = [slice(0, batch), slice(batch, 2 * batch)]
    # the same two batches, made once on the device: the timing is the step's, not the
    # data pipeline's (each batch carries its example ids for the cache)
    batches = [
        (images[h], labels[h], {"example_id": ids[h].to(device())})
        for h in halves * (steps // 2 + 1)
    ][:steps]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext()
    objective = lambda: Objective(  # noqa: E731
        ce=Term(losses.cross_entropy, weight=0.1), kd=Term(losses.kl, weight=0.9, temperature=4.0)
    )
    base = memory_base()

    if variant in ("student step", "teacher forward", "hand-written KD step"):
        optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            with autocast:
                if variant != "student step":
                    with torch.no_grad():
                        t = teacher(x)
                    if variant == "teacher forward":
                        return
                s = student(x)
                loss = F.cross_entropy(s, y)
                if variant == "hand-written KD step":
                    kd = F.kl_div(
                        F.log_softmax(s.float() / 4, -1), F.log_softmax(t.float() / 4, -1),
                        log_target=True, reduction="batchmean",
                    )  # fmt: skip
                    loss = 0.1 * loss + 0.9 * 16 * kd
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for x, y, _ in batches[:warm]:
            step(x, y)
        sync()
        start = time.perf_counter()
        for x, y, _ in batches[warm:]:
            step(x, y)
        sync()
        seconds = (time.perf_counter() - start) / (steps - warm)
    else:
        answers: Any = teachers.Module(teacher, autocast_dtype=bf16)
        if variant.startswith("distill, teacher cache"):
            folder = Path(tempfile.mkdtemp(prefix="gpu-suite-cache-"))
            rows = [(images[i], labels[i], {"example_id": ids[i]}) for i in range(2 * batch)]
            build_cache(
                answers, rows, folder, Layout(kind="dense", num_examples=2 * batch,
                                              shard_size=batch),
                batch_size=batch, device=device(), progress=False, log=lambda m: None,
            )  # fmt: skip
            answers = teachers.Cached(folder, check_inputs="checked" in variant)
        clock = Stopwatch(warm, steps)
        distill.Distiller(
            student, answers, objective(), optimizer="sgd", lr=0.01, progress=False,
            select_metric=None, mixed_precision="bf16" if on_gpu else "no",
            callbacks=[clock], log_every=10,
        ).fit(DataLoader(batches, batch_size=None), max_steps=steps)  # fmt: skip
        seconds = clock.seconds_per_step()
    return {"seconds": seconds, "peak_gib": peak_beyond(base), "batch": batch}


# -- 3. the LLM recipe at a GPU budget ---------------------------------------------------


def case_llm(params: dict[str, Any]) -> dict[str, Any]:
    import transformers
    from torch.utils.data import DataLoader

    import distill
    from distill import Objective, Term, losses, teachers
    from distill.cache import Layout, build_cache
    from distill.methods.token_kd import sparse_token_kd_term, token_kd_term
    from distill.models.shrink import student_from_teacher

    tiny, variant = params["tiny"], params["variant"]
    if tiny:
        shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=500)  # fmt: skip
        batch, seq, steps, warm, keep, unique = 2, 32, 6, 2, 2, 4
    else:  # SmolLM2-135M's shape
        shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, vocab_size=49152)  # fmt: skip
        batch, seq, steps, warm, keep, unique = 16, 512, 200, 10, 15, 20
    on_gpu = torch.cuda.is_available()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(max_position_embeddings=seq + 1, tie_word_embeddings=True,
                                      **shape)  # fmt: skip
    teacher = transformers.LlamaForCausalLM(config).to(device()).eval().requires_grad_(False)
    student = student_from_teacher(teacher, keep=keep).requires_grad_(True).train()
    if on_gpu:
        teacher.to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape["vocab_size"], (unique * batch, seq + 1), generator=g)
    rows = [
        {"input_ids": b[:-1], "labels": b[1:], "example_id": torch.tensor(i)}
        for i, b in enumerate(blocks)
    ]
    answers: Any = None
    if variant == "labels only":
        objective = Objective(ce=Term(losses.cross_entropy))
    elif variant == "live teacher":
        answers = teachers.Module(teacher)
        objective = Objective(kd=token_kd_term(student, teacher))
    else:
        folder = Path(tempfile.mkdtemp(prefix="gpu-suite-llm-cache-"))
        build_cache(
            teachers.Module(teacher), rows, folder,
            Layout(kind="topk", num_examples=len(rows), shard_size=batch * 4, k=64,
                   vocab_size=shape["vocab_size"]),
            batch_size=batch, device=device(), progress=False, log=lambda m: None,
        )  # fmt: skip
        answers = teachers.Cached(folder)
        objective = Objective(kd=sparse_token_kd_term(student))
    clock = Stopwatch(warm, steps)
    base = memory_base()
    distill.Distiller(
        student, answers, objective, lr=1e-4, progress=False, select_metric=None,
        mixed_precision="bf16" if on_gpu else "no", max_grad_norm=1.0, callbacks=[clock],
        log_every=10,
    ).fit(DataLoader(rows, batch_size=batch, shuffle=True), max_steps=steps)  # fmt: skip
    seconds = clock.seconds_per_step()
    return {"tokens_per_s": batch * seq / seconds, "peak_gib": peak_beyond(base),
            "batch": batch, "seq": seq, "steps": steps}  # fmt: skip


CASES = {"matmul": case_matmul, "token_loss": case_token_loss, "classic": case_classic,
         "llm": case_llm}  # fmt: skip


# -- the driver --------------------------------------------------------------------------


def run_case(name: str, params: dict[str, Any], deadline: float, limit: float) -> dict[str, Any]:
    """One case in its own process (in this one with ``--in-process``); its result, or why
    there is none."""
    left = deadline - time.monotonic()
    if left < 10:
        return {"error": "not run: the suite's time was spent"}
    if IN_PROCESS:
        return json.loads(json.dumps(CASES[name](params)))  # the child's round trip
    command = [sys.executable, __file__, "--case", name, "--params", json.dumps(params)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=min(limit, left))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {min(limit, left):.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"failed (rc {done.returncode}): {last[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def liger_installed() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def section_token_loss(tiny: bool, deadline: float) -> list[str]:
    shapes = token_shapes(tiny)
    matmul = run_case("matmul", {"n": 256 if tiny else 8192, "dtype": shapes["dtype"]},
                      deadline, 120)  # fmt: skip
    tflops = matmul.get("tflops")
    methods = ["naive", "distill", "distill-compiled"] + (["liger"] if liger_installed() else [])
    lines = [
        "## 1. Token-level KD loss, forward + backward",
        "",
        f"Vocabulary {shapes['vocab']:,}, student hidden {shapes['hs']:,}, teacher hidden "
        f"{shapes['ht']:,}, {shapes['dtype']}; median of the repeats after two warm-up calls, "
        f"{WHERE[IN_PROCESS]}. Floor: 2 · tokens · V · (3 H_s + H_t) "
        f"FLOPs at the measured matmul throughput ({fmt(tflops, '.3g') or '?'} TFLOP/s"
        f"{'' if torch.cuda.is_available() else ', float32 on the CPU'}). Goal at 16k tokens: "
        "≤ 1.25× the floor and ≤ 1.5 GiB. Liger-Kernel: "
        + ("installed." if "liger" in methods else "not installed (no row)."),
        "",
        "| tokens | divergence | method | ms | × floor | peak beyond inputs (GiB) |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for tokens in shapes["tokens"]:
        flops = 2 * tokens * shapes["vocab"] * (3 * shapes["hs"] + shapes["ht"])
        for divergence in ("kl", "jsd"):
            for method in methods:
                params = {**shapes, "tokens": tokens, "method": method,
                          "divergence": divergence, "repeats": 3 if tiny else 5}  # fmt: skip
                result = run_case("token_loss", params, deadline, 240)
                label = "JSD(0.5)" if divergence == "jsd" else "forward KL"
                if "error" in result:
                    lines.append(f"| {tokens:,} | {label} | {method} | {result['error']} | | |")
                    continue
                seconds = result["seconds"]
                floor = f"{seconds / (flops / (tflops * 1e12)):.2f}" if tflops else ""
                lines.append(
                    f"| {tokens:,} | {label} | {method} | {1000 * seconds:.2f} | {floor} | "
                    f"{fmt(result['peak_gib'], '.2f')} |"
                )
                print(lines[-1], flush=True)
    return lines


def section_classic(tiny: bool, deadline: float) -> list[str]:
    variants = [
        "student step",
        "teacher forward",
        "hand-written KD step",
        "distill KD step",
        "distill, teacher cache (inputs checked)",
        "distill, teacher cache (unchecked)",
    ]
    results = {
        v: run_case("classic", {"tiny": tiny, "variant": v}, deadline, 240) for v in variants
    }
    models = "CNN → MLP (tiny)" if tiny else "ResNet-50 → ResNet-18 (torchvision, random weights)"
    batch = next((r["batch"] for r in results.values() if "batch" in r), "?")
    lines = [
        "## 2. Classic KD step",
        "",
        f"{models}, batch {batch}"
        + (", bf16 autocast, channels-last" if torch.cuda.is_available() else ", float32")
        + "; the same two batches on the device, time per step after the warm-up steps. "
        "Goals: distill ≤ 1.02 × (student step + teacher forward); cached ≤ 1.05 × student step.",
        "",
        "| step | ms | vs student step + teacher forward | vs student step | peak (GiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    plain = results["student step"].get("seconds")
    forward = results["teacher forward"].get("seconds")
    for variant, result in results.items():
        if "error" in result:
            lines.append(f"| {variant} | {result['error']} | | | |")
            continue
        s = result["seconds"]
        both = f"{s / (plain + forward):.3f}" if plain and forward else ""
        lines.append(
            f"| {variant} | {1000 * s:.2f} | {both} | {fmt(s / plain if plain else None, '.3f')} "
            f"| {fmt(result['peak_gib'], '.2f')} |"
        )
        print(lines[-1], flush=True)
    return lines


def section_llm(tiny: bool, deadline: float) -> list[str]:
    variants = ["labels only", "live teacher", "top-64 cache"]
    results = {v: run_case("llm", {"tiny": tiny, "variant": v}, deadline, 300) for v in variants}
    done = next((r for r in results.values() if "batch" in r), {})
    lines = [
        "## 3. `llm_token_kd` models at a GPU budget",
        "",
        ("A 4-layer Llama (hidden 32, vocabulary 500) teaching 2 of its layers"
         if tiny else "A Llama of SmolLM2-135M's shape (random weights) teaching 15 of its 30 "
         "layers")
        + f", batch {done.get('batch', '?')} × {done.get('seq', '?')} tokens, "
        f"{done.get('steps', '?')} steps"
        + (", bf16 autocast (teacher in bf16)" if torch.cuda.is_available() else ", float32")
        + "; tokens per second after the warm-up steps. Not measured: FSDP or DDP over "
        "processes (one GPU).",
        "",
        "| student trained with | tokens / s | peak (GiB) |",
        "| --- | ---: | ---: |",
    ]  # fmt: skip
    for variant, result in results.items():
        if "error" in result:
            lines.append(f"| {variant} | {result['error']} | |")
            continue
        lines.append(
            f"| {variant} | {result['tokens_per_s']:,.0f} | {fmt(result['peak_gib'], '.2f')} |"
        )
        print(lines[-1], flush=True)
    return lines


def machine() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        return f"{name}, driver {driver or '?'}, CUDA {torch.version.cuda}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes: any machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="+", choices=["token", "classic", "llm"])
    parser.add_argument(
        "--in-process", action="store_true",
        help="every case in this process, not one process each (quicker; the GPU run "
        "isolates them: a method that recompiles for a new shape can crash its process)",
    )  # fmt: skip
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process: one case, its result as the last line
        print(json.dumps(CASES[args.case](json.loads(args.params))))
        return
    global IN_PROCESS
    IN_PROCESS = args.in_process
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: use --tiny for the small shapes on this machine")
    started = time.monotonic()
    deadline = started + BUDGET_S
    sections = {"token": section_token_loss, "classic": section_classic, "llm": section_llm}
    body: list[str] = []
    for name, section in sections.items():
        if args.only and name not in args.only:
            continue
        body += ["", *section(args.tiny, deadline)]
    minutes = (time.monotonic() - started) / 60
    header = [
        "# distill on a GPU" + (" (--tiny, small shapes)" if args.tiny else ""),
        "",
        f"Machine: {machine()}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; {minutes:.1f} minutes in all.",
        "",
        "Command: `python benchmarks/gpu_suite.py"
        + (" --tiny" if args.tiny else "")
        + (" --in-process" if args.in_process else "")
        + "`",
    ]
    text = "\n".join(header + body) + "\n"
    name = "gpu_tiny.md" if args.tiny else "gpu.md"
    out = args.out or ROOT / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
