"""What the engine calls back: after every optimizer step and after every validation."""

from __future__ import annotations

import time
from typing import Any

import torch


class Callback:
    """Override what you need; the engine (``distiller``, a ``Distiller``: ``.model`` is the
    student, ``.total_steps`` the run's length) calls these on the main process only, or on
    every process when ``all_ranks`` is true (a callback that changes the student, like
    gradual pruning, must run everywhere).

    ``logs`` maps the step's logged names to floats (``loss``, ``loss/<term>``, ``lr``, ...);
    the losses stay on the device until read, so a callback that reads one makes the
    host wait for the device at every step (``logs.is_read`` says whether it has been)."""

    all_ranks = False

    def on_step_end(self, distiller: Any, step: int, logs: dict[str, float]) -> None:
        pass

    def on_evaluate(self, distiller: Any, step: int, metrics: dict[str, float]) -> None:
        pass


class StepClock(Callback):
    """Notes the wall-clock time at the end of every step (on every process; the GPU is
    synchronised first) for throughput benchmarks."""

    all_ranks = True

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, distiller: Any, step: int, logs: dict[str, float]) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        """Mean time per step after the first (which carries the setup)."""
        if len(self.times) < 2:
            raise ValueError("time per step needs at least two steps")
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)
