"""The state of a training run between steps: where it is (``TrainState``, what a
checkpoint's ``state.json`` holds) and where it ended (``FitResult``), the metrics file,
running means, Ctrl-C, and the non-finite policy's checks and message."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import NonFiniteLoss
from distill.training.checkpoint import latest_checkpoint

METRICS_FILE = "metrics.jsonl"


@dataclass
class FitResult:
    """What ``fit`` returns: where it ended and the validation history."""

    steps: int
    total_steps: int
    best_metric: float | None
    best_step: int | None
    evaluations: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None


@dataclass
class TrainState:
    """Where a run stands: optimizer steps taken, the epoch and the batches of it read,
    the best validation metric so far (and its step) and every validation row."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def nonfinite_error(
    step: int, problem: str, run_dir: Path | None, read_at: int | None = None
) -> NonFiniteLoss:
    """The one line a stopped run prints: where, what, the last good checkpoint, what to
    try. ``read_at``: the step at which the losses were read and the problem found (they are
    read every few steps, so the progress bar stops there, after ``step``)."""
    last = latest_checkpoint(run_dir) if run_dir is not None else None
    found = (
        f" (found at step {read_at}, where the losses since the last log were read)"
        if read_at is not None and read_at != step
        else ""
    )
    return NonFiniteLoss(
        f"step {step}: {problem}{found}; training stopped, and "
        + (
            f"the last checkpoint ({last}) holds the last good weights"
            if last
            else "nothing was saved"
        )
        + ". Try a lower train.lr or a train.max_grad_norm, or check the teacher's outputs "
        "(train.on_nonfinite: skip_step drops such steps and goes on)"
    )


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def lower_is_better(metric: str) -> bool:
    """Losses and KL (also measured on held-out rows, ``heldout_…``): lower is better;
    every other metric: higher."""
    metric = metric.removeprefix("heldout_")
    return metric.endswith("loss") or metric.startswith("kl")


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` beats ``old`` for ``metric`` (see ``lower_is_better``)."""
    return old is None or (new < old if lower_is_better(metric) else new > old)


class StopRequest:
    """SIGINT handler: the first Ctrl-C asks for a clean stop, the second interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class RunningMeans:
    """Means of the logged values since the last ``pop``."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop rows an interrupted run logged after its last checkpoint."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    shutil.move(tmp, path)
