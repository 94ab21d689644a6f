"""Schedules for a term's weight or temperature over training.

A schedule is a callable ``(step, total_steps) -> value``; ``step`` counts optimizer
updates from 0. A plain number is a constant schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    def __call__(self, step: int, total_steps: int) -> float: ...


def _progress(step: int, steps: int) -> float:
    return min(max(step / steps, 0.0), 1.0) if steps > 0 else 1.0


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    """From ``start`` to ``end`` linearly over ``steps`` updates (all of training if None)."""

    start: float
    end: float
    steps: int | None = None

    def __call__(self, step: int, total_steps: int) -> float:
        frac = _progress(step, self.steps if self.steps is not None else total_steps)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class Cosine:
    """From ``start`` to ``end`` along a half cosine over ``steps`` (all of training if None)."""

    start: float
    end: float
    steps: int | None = None

    def __call__(self, step: int, total_steps: int) -> float:
        frac = _progress(step, self.steps if self.steps is not None else total_steps)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up from 0 to ``value`` over ``steps`` updates, then constant (as DKD)."""

    value: float
    steps: int

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value * _progress(step, self.steps)


def as_schedule(value: float | Schedule) -> Schedule:
    if isinstance(value, (int, float)):
        return Constant(float(value))
    if callable(value):
        return value
    raise TypeError(f"expected a number or a schedule, got {type(value).__name__}")
