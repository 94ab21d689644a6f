"""How a self-supervised run's summary reads: a terminal table of k-NN and linear-probe
accuracy per model, and a verdict on what the unlabelled images bought over the same
network trained on the probe's labels alone."""

from __future__ import annotations

from typing import Any

from distill.runs.report.tables import SummaryLayout, known, model_rows


def probes(summary: dict[str, Any]) -> list[str]:
    """The probe metrics of the summary's models, in the recipe's order."""
    first = next(iter(summary["models"].values()))
    return [key for key in first if key.startswith("probe_")]


def selfsup_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = probes(summary)
    names = [key.removeprefix("probe_") for key in keys]
    header = ["model", "k-NN", *(f"probe {name}" for name in names), "params", "train"]
    rows = []
    for key, label, _ in model_rows(summary):
        m = summary["models"][key]
        rows.append(
            [
                label.replace("distilled", "self-supervised"),
                f"{100 * m['knn_accuracy']:.2f}%",
                *(f"{100 * m[probe]:.2f}%" for probe in keys),
                known(m.get("parameters"), "{:,.0f}"),
                f"{m.get('train_seconds', 0.0):.0f} s",
            ]
        )
    return header, rows


def selfsup_verdict(summary: dict[str, Any]) -> str:
    models = summary["models"]
    student, base = models["student"], models.get("baseline")
    first = probes(summary)[0].removeprefix("probe_")
    text = (
        f"Without labels, a linear probe on {first} labels reads {100 * student['accuracy']:.2f}% "
        f"of the test split from the student's features (k-NN {100 * student['knn_accuracy']:.2f}%)"
    )
    if base is None:
        return text + "."
    gain = student["accuracy"] - base["accuracy"]
    return (
        text + "; the same network trained on those labels alone, probed the same way, "
        f"reads {100 * base['accuracy']:.2f}% (its own classifier "
        f"{100 * base['head_accuracy']:.2f}%): {100 * gain:+.2f} points without labels."
    )


LAYOUT = SummaryLayout(terminal_table=selfsup_table, verdict=selfsup_verdict)
