"""``distill doctor`` (``doctor.run.diagnose``): diagnose the five classic KD pitfalls
(temperature, teacher overconfidence, capacity gap, data shift, teacher cost) with a verdict
and a fix each, and a kind of run's own checks (``Diagnosable.own_checks``: the language
models')."""

from distill.doctor.checks import (
    Finding,
    capacity_gap_check,
    overconfidence_check,
    teacher_cost_check,
    temperature_check,
)
from distill.doctor.shift import data_shift_check

__all__ = [
    "Finding",
    "capacity_gap_check",
    "data_shift_check",
    "overconfidence_check",
    "teacher_cost_check",
    "temperature_check",
]
