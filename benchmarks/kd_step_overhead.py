"""What distill's training step costs over a hand-written PyTorch KD loop.

The demo's models (the CNN teacher with channels 32/64 and a 128-unit head; the 784-64-10
MLP student), Fashion-MNIST-shaped batches of 128 (the real images when the Debian package
is installed, else random ones of the same shape: the time does not depend on the pixels),
AdamW at 2e-3 with a cosine schedule, and the demo's objective (0.1 · CE + 0.9 · KL at
T = 2, T² scaled). The same models, initial weights, batches and loss run

- ``hand-written``: the plain loop (teacher forward under ``no_grad``, student forward,
  loss, ``backward``, ``step``, schedule step);
- ``distill``: ``Distiller(...).fit`` with the same settings (progress bar off).

Rounds alternate the two in one process; each round times the steps after its first
(setup and the first step's allocations excluded). The table gives the median time per
step of each, and the ratio distill / hand-written of each round (paired rounds: a machine
that slows down between rounds slows both), as its median and range.

    python benchmarks/kd_step_overhead.py               # CPU: about 1 minute
    python benchmarks/kd_step_overhead.py --device cuda

Writes ``benchmarks/results/kd_step_overhead_<device>.md`` and prints it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill import Objective, Term, losses, teachers
from distill.data.idx import fashion_mnist_available, load_fashion_mnist
from distill.models import build_model
from distill.training import StepClock
from distill.training.config import TrainConfig, lr_factor

ROOT = Path(__file__).parent
TEMPERATURE, KD_WEIGHT, CE_WEIGHT, LR = 2.0, 0.9, 0.1, 2e-3


def images(examples: int) -> tuple[TensorDataset, str]:
    """Fashion-MNIST's first training images when installed, else random ones."""
    if fashion_mnist_available():
        train, _ = load_fashion_mnist(allow_download=False)
        x, y = train.tensors
        return TensorDataset(x[:examples], y[:examples]), "Fashion-MNIST"
    g = torch.Generator().manual_seed(0)
    x = torch.rand(examples, 1, 28, 28, generator=g)
    return TensorDataset(x, torch.randint(0, 10, (examples,), generator=g)), "random"


def models(device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [32, 64], "hidden": 128})
    student = build_model("zoo:mlp", 10, (1, 28, 28), {"hidden": 64})
    return teacher.to(device).eval().requires_grad_(False), student.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hand_written(teacher, student, loader, steps: int, device: str) -> float:
    """Seconds per step of the plain loop, after its first step."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    factor = lr_factor("cosine", 0, steps, [], 0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    student.train()
    times = []
    for step, (x, y) in enumerate(loader):
        if step == steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kd = F.kl_div(
            F.log_softmax(s / TEMPERATURE, -1),
            F.log_softmax(t / TEMPERATURE, -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = CE_WEIGHT * F.cross_entropy(s, y) + KD_WEIGHT * TEMPERATURE**2 * kd
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter())
    return (times[-1] - times[0]) / (len(times) - 1)


def with_distill(teacher, student, loader, steps: int, device: str) -> float:
    """Seconds per step of ``Distiller.fit``, after its first step."""
    clock = StepClock()
    objective = Objective(
        ce=Term(losses.cross_entropy, weight=CE_WEIGHT),
        kd=Term(losses.kl, weight=KD_WEIGHT, temperature=TEMPERATURE),
    )
    distill.Distiller(
        student,
        teachers.Module(teacher),
        objective,
        lr=LR,
        lr_schedule="cosine",
        progress=False,
        select_metric=None,
        cpu=device == "cpu",
        callbacks=[clock],
    ).fit(loader, max_steps=steps)
    return clock.seconds_per_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data, source = images(args.steps * args.batch)
    teacher, student = models(args.device)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    times: dict[str, list[float]] = {"hand-written": [], "distill": []}
    runs = {"hand-written": hand_written, "distill": with_distill}
    for round_ in range(args.rounds):
        for name, run in runs.items():
            student.load_state_dict(initial)
            torch.manual_seed(round_)
            loader = DataLoader(data, batch_size=args.batch, shuffle=True)
            times[name].append(run(teacher, student, loader, args.steps, args.device))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {1000 * v[-1]:.2f} ms" for k, v in
                                                  times.items()), flush=True)  # fmt: skip
    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    default_steps = TrainConfig().log_every
    lines = [
        f"# KD step overhead: distill against a hand-written loop ({args.device})",
        "",
        f"The demo's CNN teacher and MLP student, {source} batches of {args.batch}, AdamW with "
        f"a cosine schedule, 0.1 · CE + 0.9 · KL at T = 2; {args.rounds} alternating rounds of "
        f"{args.steps} steps, each timed after its first step; median over rounds. distill "
        f"reads its logged values once per {default_steps} steps (its default `log_every`). "
        f"Machine: {machine}, torch {torch.__version__}.",
        "",
        f"Command: `python benchmarks/kd_step_overhead.py --device {args.device}`",
        "",
        "| loop | ms / step (median) | fastest round | slowest round | vs hand-written, "
        "per round: median (range) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in times.items():
        ratios = [v / h for v, h in zip(values, times["hand-written"], strict=True)]
        lines.append(
            f"| {name} | {1000 * statistics.median(values):.2f} | {1000 * min(values):.2f} | "
            f"{1000 * max(values):.2f} | {statistics.median(ratios):.3f}× "
            f"({min(ratios):.3f}–{max(ratios):.3f}) |"
        )
    text = "\n".join(lines) + "\n"
    out = args.out or ROOT / "results" / f"kd_step_overhead_{args.device}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
