"""``distill doctor``: diagnose the five classic KD pitfalls (temperature, teacher
overconfidence, capacity gap, data shift, teacher cost) with a verdict and a fix each, and
the language-model checks (``doctor.language``)."""

from distill.doctor.checks import (
    Finding,
    capacity_gap_check,
    overconfidence_check,
    teacher_cost_check,
    temperature_check,
)
from distill.doctor.run import diagnose
from distill.doctor.shift import data_shift_check

__all__ = [
    "Finding",
    "capacity_gap_check",
    "data_shift_check",
    "diagnose",
    "overconfidence_check",
    "teacher_cost_check",
    "temperature_check",
]
