"""The report of ``distill search``: ``search.md`` with the full runs (the searched student
next to the recipe's own), the Pareto front of validation metric and latency among the
trained trials, every trial with its ``--set`` overrides; and ``pareto.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from distill.errors import RecipeError
from distill.runs.report.page import plots_wanted
from distill.runs.search.space import MEASURES, ONNX, amount, describe
from distill.training.state import is_better, lower_is_better

REPORT_FILE = "search.md"
PLOT_FILE = "pareto.png"


def final_metrics(metric: str) -> list[str]:
    """The test metrics the full runs report: the search's metric, and accuracy."""
    return list(dict.fromkeys([metric, "accuracy"]))


def shown_metrics(summary: dict[str, Any]) -> list[str]:
    """Those of ``final_metrics`` the full runs of ``summary`` measured."""
    final = next(iter(summary["final"].values()))
    return [m for m in final_metrics(summary["metric"]) if m in final]


def choose(rows: list[dict[str, Any]], metric: str, limits: dict[str, float]) -> dict[str, Any]:
    """The trained trial with the best validation metric (all trained ones met the budget),
    the fastest of those tied: a point of the Pareto front."""
    scored = [r for r in rows if r["state"] == "complete"]
    if not scored:
        over = [r for r in rows if "over_budget" in r]
        smallest = {name: min(r[name] for r in over) for name in limits if over}
        raise RecipeError(
            "search: no trial finished"
            + (
                f"; {len(over)} were over the budget (smallest seen: "
                + ", ".join(
                    f"{k} {amount(k, v)} vs {amount(k, limits[k])}" for k, v in smallest.items()
                )
                + "); widen search.budget or search smaller candidates"
                if over
                else "; run more trials (--trials)"
            )
        )
    sign = 1 if lower_is_better(metric) else -1
    return min(scored, key=lambda row: (sign * row["value"], row["latency_ms"]))


def pareto_front(rows: list[dict[str, Any]], metric: str) -> list[int]:
    """Numbers of the trained trials no other trained trial beats on both the validation
    metric and latency, fastest first."""
    trained = [r for r in rows if r["state"] == "complete"]

    def beaten(row: dict[str, Any]) -> bool:
        return any(
            other["latency_ms"] <= row["latency_ms"]
            and not is_better(metric, row["value"], other["value"])
            and (other["latency_ms"] < row["latency_ms"] or other["value"] != row["value"])
            for other in trained
        )

    front = [r for r in trained if not beaten(r)]
    return [r["number"] for r in sorted(front, key=lambda r: r["latency_ms"])]


def plot_pareto(summary: dict[str, Any], out: Path) -> None:
    rows, metric = summary["trials"], summary["metric"]
    trained = [r for r in rows if r["state"] == "complete"]
    stopped = [r for r in rows if r["state"] == "pruned" and r.get("value") is not None]
    front = [next(r for r in rows if r["number"] == n) for n in summary["pareto"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(
        [r["latency_ms"] for r in trained],
        [r["value"] for r in trained],
        s=18,
        color="tab:gray",
        alpha=0.7,
        label="trained trials",
    )
    if stopped:
        ax.scatter(
            [r["latency_ms"] for r in stopped],
            [r["value"] for r in stopped],
            s=14,
            marker="x",
            color="tab:orange",
            alpha=0.7,
            label="stopped early (last value)",
        )
    ax.plot(
        [r["latency_ms"] for r in front],
        [r["value"] for r in front],
        "-o",
        color="tab:blue",
        markersize=5,
        label="Pareto front",
    )
    chosen = summary["chosen"]
    ax.scatter(
        [chosen["latency_ms"]],
        [chosen["value"]],
        s=90,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=2,
        label="chosen",
        zorder=3,
    )
    if "latency_ms" in summary["budget"]:
        ax.axvline(summary["budget"]["latency_ms"], color="tab:red", ls="--", lw=1, label="budget")
    ax.set_xlabel(f"CPU latency per example (ms, batch {summary['batch_size']})")
    ax.set_ylabel(f"validation {metric} after the short distillation")
    ax.set_title(f"{summary['name']}: {len(rows)} trials ({summary['sampler']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def final_value(result: dict[str, Any], metric: str) -> str:
    """A full run's test ``metric`` as a person reads it: accuracy in percent, and the
    standard deviation over the seeds only when there were several (``83.82 ± 0.41%``)."""
    value, std = result[metric], result[f"{metric}_std"]
    several = len(result.get("seeds", [])) > 1
    if metric == "accuracy":
        return f"{100 * value:.2f} ± {100 * std:.2f}%" if several else f"{100 * value:.2f}%"
    return f"{value:.4f} ± {std:.4f}" if several else f"{value:.4f}"


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def markdown(summary: dict[str, Any]) -> str:
    metric, rows, final = summary["metric"], summary["trials"], summary["final"]
    states = [r["state"] for r in rows]
    over = sum("over_budget" in r for r in rows)
    budget = ", ".join(f"{MEASURES[k]} <= {_number(v)}" for k, v in summary["budget"].items())
    shown = shown_metrics(summary)
    seeds = len(next(iter(final.values()))["seeds"])
    onnx = onnx_measures([*rows, *final.values()])
    lines = [
        f"# Student search: {summary['name']}",
        "",
        f"{len(rows)} trials with {summary['sampler']}: {states.count('complete')} trained, "
        f"{over} over the budget, {states.count('pruned') - over} stopped early by the pruner. "
        f"Budget: {budget or 'none'} (per example, forwards of {summary['batch_size']}). "
        f"Chosen: trial {summary['chosen']['number']}, "
        f"`{describe(summary['chosen']['student'])}`.",
        "",
        "## Full runs (the recipe's budget; test split"
        + (f"; mean ± standard deviation over {seeds} seeds)" if seeds > 1 else "; one seed)"),
        "",
        "| student | params | CPU ms / ex. | "
        + "".join(f"{MEASURES[m]} | " for m in onnx)
        + " | ".join(f"test {m}" for m in shown)
        + " | seeds |",
        "| --- | --- | --- | " + "--- | " * (len(onnx) + len(shown)) + "--- |",
    ]
    for row, result in final.items():
        lines.append(
            f"| {row.replace('_', '-')}: `{describe(result['student'])}` | "
            f"{_number(result['parameters'])} | {_number(result['latency_ms'])} | "
            + "".join(f"{_number(result.get(m))} | " for m in onnx)
            + " | ".join(final_value(result, m) for m in shown)
            + f" | {len(result['seeds'])} |"
        )
    if plots_wanted():
        lines += ["", f"![Pareto front]({PLOT_FILE})"]
    lines += ["", "## Pareto front (trained trials)", ""]
    lines += _trial_table(
        [next(r for r in rows if r["number"] == n) for n in summary["pareto"]], metric, onnx
    )
    lines += ["", "## Every trial", ""]
    lines += _trial_table(rows, metric, onnx)
    return "\n".join(lines) + "\n"


def onnx_measures(rows: list[dict[str, Any]]) -> list[str]:
    """The ONNX Runtime latencies measured (a budget named one): shown beside PyTorch's."""
    return [name for name in ONNX if any(name in row for row in rows)]


def _trial_table(rows: list[dict[str, Any]], metric: str, onnx: list[str]) -> list[str]:
    lines = [
        "| trial | state | student | params | CPU ms / ex. | "
        + "".join(f"{MEASURES[m]} | " for m in onnx)
        + f"memory (MB) | val {metric} | overrides |",
        "| --- | --- | --- | --- | --- | " + "--- | " * len(onnx) + "--- | --- | --- |",
    ]
    for r in rows:
        state = r["state"] if "over_budget" not in r else f"over budget: {r['over_budget']}"
        lines.append(
            f"| {r['number']} | {state} | `{describe(r['student'])}` | "
            f"{_number(r.get('parameters'))} | {_number(r.get('latency_ms'))} | "
            + "".join(f"{_number(r.get(m))} | " for m in onnx)
            + f"{_number(r.get('memory_mb'))} | {_number(r.get('value'))} | "
            + " ".join(f"`--set {o}`" for o in r["overrides"])
            + " |"
        )
    return lines


def write_search_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    if summary["pareto"] and plots_wanted():
        plot_pareto(summary, run_dir / PLOT_FILE)
    path = run_dir / REPORT_FILE
    path.write_text(markdown(summary))
    return path
