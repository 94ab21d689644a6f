"""A recipe's student search space in Optuna's terms, and what a candidate costs.

``suggest`` draws one candidate's ``student`` section from a trial (a family, then each
searched field of it) and ``trial_params`` is its inverse; ``smallest`` is a family's
cheapest corner, built before any trial to catch an unknown field or a budget nothing can
meet (and then the first trial of a new study: a search always has a student that fits);
``measure`` times and weighs a built candidate on this machine; ``over_budget`` says which
limits it breaks.

Timings on a shared machine are noisy, so a limit measured from the recipe's student
(``student``) is the upper quartile of ``ROUNDS`` timings plus ``search.budget.margin``,
and a candidate over a timed limit only is timed again (``ROUNDS`` in all) and judged by
the median: one busy moment neither sets the budget nor rules a candidate out.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from distill.measure import cpu_latency_ms, forward_memory_bytes, parameter_count
from distill.recipes.search_spec import ONNX_MEASURES, Candidate, Dimension
from distill.runs.task import Task

MEASURING = threading.Lock()
ROUNDS = 5  # timings of the budget's student, and of a candidate near a timed limit
# the measures the machine's load changes
TIMED = ("latency_ms", "onnx_latency_ms", "onnx_int8_latency_ms")
ONNX = ONNX_MEASURES  # measured together, when a budget names one
MEASURES = {
    "parameters": "parameters",
    "latency_ms": "CPU ms / example",
    "memory_mb": "memory (MB)",
    "onnx_latency_ms": "ONNX Runtime ms / example",
    "onnx_int8_latency_ms": "ONNX Runtime int8 ms / example",
}


def labels(candidates: list[Candidate]) -> list[str]:
    """One name per family: its model, numbered when two families share one."""
    models = [c.model for c in candidates]
    return [m if models.count(m) == 1 else f"{m}#{i}" for i, m in enumerate(models)]


def suggest(trial: Any, candidates: list[Candidate], families: list[str]) -> dict[str, Any]:
    """The ``student`` section (model and args) of the candidate ``trial`` draws from the
    ``families`` searched (their ``labels``)."""
    names = labels(candidates)
    family = trial.suggest_categorical("family", families) if len(families) > 1 else families[0]
    index = names.index(family)
    candidate = candidates[index]
    args = {
        name: suggest_value(trial, f"{names[index]}.{name}", value)
        if isinstance(value, Dimension)
        else value
        for name, value in candidate.args.items()
    }
    return {"model": candidate.model, "args": args}


def suggest_value(trial: Any, key: str, dimension: Dimension) -> Any:
    if dimension.choices is not None:  # Optuna stores scalars: lists go as their JSON
        shown = [json.dumps(choice) for choice in dimension.choices]
        return json.loads(trial.suggest_categorical(key, shown))
    if dimension.layers is not None:
        count = trial.suggest_int(f"{key}.layers", *dimension.layers)
        return [suggest_number(trial, f"{key}.{i}", dimension) for i in range(count)]
    return suggest_number(trial, key, dimension)


def suggest_number(trial: Any, key: str, dimension: Dimension) -> int | float:
    if dimension.integer:
        return trial.suggest_int(
            key, dimension.low, dimension.high, step=dimension.step or 1, log=dimension.log
        )
    return trial.suggest_float(
        key, float(dimension.low), float(dimension.high), step=dimension.step, log=dimension.log
    )


def trial_params(
    student: dict[str, Any], candidate: Candidate, label: str, families: list[str]
) -> dict[str, Any]:
    """The Optuna parameters under which ``suggest`` draws ``student`` from ``candidate``
    (the family named ``label``), to enqueue it as a trial."""
    params: dict[str, Any] = {"family": label} if len(families) > 1 else {}
    for name, dimension in candidate.searched.items():
        key, value = f"{label}.{name}", student["args"][name]
        if dimension.choices is not None:
            params[key] = json.dumps(value)
        elif dimension.layers is not None:
            params[f"{key}.layers"] = len(value)
            params.update({f"{key}.{i}": width for i, width in enumerate(value)})
        else:
            params[key] = value
    return params


def corner_trials(candidates: list[Candidate], families: list[str]) -> list[dict[str, Any]]:
    """The Optuna parameters of each searched family's cheapest corner (``smallest``)."""
    return [
        trial_params(smallest(candidate), candidate, label, families)
        for label, candidate in zip(labels(candidates), candidates, strict=True)
        if label in families
    ]


def smallest(candidate: Candidate) -> dict[str, Any]:
    """The family's cheapest corner: every searched field at its smallest value (the
    smallest choice when choices compare, else the first)."""
    args: dict[str, Any] = {}
    for name, value in candidate.args.items():
        if not isinstance(value, Dimension):
            args[name] = value
            continue
        corners = value.corners()
        try:
            args[name] = min(corners) if value.choices is not None else corners[0]
        except TypeError:
            args[name] = corners[0]
    return {"model": candidate.model, "args": args}


def measure(
    task: Task, model: nn.Module, repeats: int, onnx: bool = False, batch: int = 1
) -> dict[str, float]:
    """Parameters, the median CPU latency per example of forwards of ``batch`` examples
    (``repeats`` of them), the memory of such a forward (weights plus the peak of live
    tensors), and optionally ONNX Runtime's latency of its export and of that export's
    dynamic int8 version, timed back to back, all measured here; one candidate at a time
    (with ``--jobs``, timings are steadier so)."""
    with MEASURING:
        return _measure(task, model, repeats, onnx, batch)


def _measure(
    task: Task, model: nn.Module, repeats: int, onnx: bool, batch: int
) -> dict[str, float]:
    example, kwargs = task.latency_input(model)
    measured = {
        "parameters": float(parameter_count(model)),
        "latency_ms": cpu_latency_ms(model, example, repeats, batch=batch, **kwargs),
        "memory_mb": forward_memory_bytes(model, example, batch, **kwargs) / 2**20,
    }
    if onnx:
        measured.update(onnx_latencies(model, example, repeats, batch))
    return measured


def onnx_latencies(model: nn.Module, example: Any, repeats: int, batch: int) -> dict[str, float]:
    """ONNX Runtime's latency per example of ``model`` exported, and of that export's
    dynamic int8 version, timed back to back (``ONNX``); ``model``'s mode is kept."""
    from distill.compress.export import export_onnx, onnx_latency_ms, quantize_onnx_int8

    with tempfile.TemporaryDirectory() as folder:
        was_training = model.training
        path = export_onnx(model, example.unsqueeze(0), Path(folder) / "candidate.onnx")
        int8 = quantize_onnx_int8(path, Path(folder) / "candidate_int8.onnx")
        timed = {
            "onnx_latency_ms": onnx_latency_ms(path, example, repeats, batch=batch),
            "onnx_int8_latency_ms": onnx_latency_ms(int8, example, repeats, batch=batch),
        }
        model.train(was_training)
    return timed


def budget_limits(
    wanted: dict[str, Any], rounds: list[dict[str, float]], margin: float
) -> tuple[dict[str, float], list[str]]:
    """The budget in numbers: a limit given as ``student`` is what the recipe's student
    measured (``rounds``, one dict per timing); a timed one the upper quartile of its rounds
    plus ``margin`` (a share), for this machine's noise. Also a phrase per measured limit."""
    limits, said = {}, []
    for name, value in wanted.items():
        if value != "student":
            limits[name] = float(value)
            continue
        seen = sorted(r[name] for r in rounds)
        if name not in TIMED:  # the same in every round
            limits[name] = seen[-1]
            said.append(f"{name} {amount(name, limits[name])}")
            continue
        upper = statistics.quantiles(seen, n=4, method="inclusive")[2] if seen[1:] else seen[0]
        limits[name] = upper * (1 + margin)
        said.append(
            f"{name} {seen[0]:.4g} to {seen[-1]:.4g} over {len(seen)} timings, so the limit is "
            f"{limits[name]:.4g} (their upper quartile + {margin:.0%} margin)"
        )
    return limits, said


def settled(
    measured: dict[str, float], limits: dict[str, float], again: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """``measured``, or, when only timed limits are broken, the median of ``ROUNDS`` timings
    (``again`` times the candidate once more): a busy moment does not rule it out."""
    broken = [name for name in limits if measured[name] > limits[name]]
    if not broken or any(name not in TIMED for name in broken):
        return measured
    rounds = [measured, *(again() for _ in range(ROUNDS - 1))]
    return {
        name: statistics.median(r[name] for r in rounds) if name in TIMED else value
        for name, value in measured.items()
    }


def amount(name: str, value: float) -> str:
    """A measure as a person reads it: a parameter count whole, with thousands separators."""
    return f"{round(value):,}" if name == "parameters" else f"{value:.4g}"


def over_budget(measured: dict[str, float], limits: dict[str, float]) -> list[str]:
    """The limits ``measured`` breaks, each as ``latency_ms 0.061 > 0.05``."""
    return [
        f"{name} {amount(name, measured[name])} > {amount(name, limit)}"
        for name, limit in limits.items()
        if measured[name] > limit
    ]


def describe(student: dict[str, Any]) -> str:
    """``zoo:mlp hidden=[256, 64]``: a candidate in one line."""
    args = " ".join(f"{k}={json.dumps(v)}" for k, v in student["args"].items())
    return f"{student['model']} {args}".strip()


def overrides(student: dict[str, Any]) -> list[str]:
    """The ``--set`` overrides that make the recipe train this candidate."""
    return [f"student.model={student['model']}", f"student.args={json.dumps(student['args'])}"]
