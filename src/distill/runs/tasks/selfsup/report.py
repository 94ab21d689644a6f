"""How a self-supervised run's summary reads: a terminal table of k-NN and linear-probe
accuracy per model, and a verdict on what the unlabelled images bought over the same
network trained on the probe's labels alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distill.runs.report.tables import SummaryLayout, known, model_rows

PROJECTION = "features_2d.json"  # next to a student's weights: its test features in 2-D
POINTS = 2000  # test examples drawn
LINES = (("val/knn_accuracy", "-", "k-NN"), ("val/accuracy", "--", "probe"))  # per epoch


def projection(features: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """The first two principal components of ``features`` (the first ``POINTS`` rows),
    with their labels: what ``features.png`` draws."""
    x = features[:POINTS].double()
    x = x - x.mean(0)
    _, _, v = torch.pca_lowrank(x, q=2, center=False)
    points = (x @ v[:, :2]).float()
    return {"xy": points.tolist(), "labels": labels[:POINTS].tolist()}


def figures(run_dir: Path, summary: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Accuracy against epochs, and the test features in 2-D."""
    import matplotlib

    matplotlib.use("Agg")
    (run_dir / "plots").mkdir(exist_ok=True)
    return epoch_figure(run_dir) | feature_figures(run_dir)


def validations(metrics: Path) -> list[dict[str, float]]:
    """The validation rows of a ``metrics.jsonl`` (those with ``val/knn_accuracy``)."""
    if not metrics.exists():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [row for row in rows if "val/knn_accuracy" in row]


def steps_per_epoch(rows: list[dict[str, float]]) -> float | None:
    """The steps of an epoch, read from the first validation row after a finished epoch."""
    return next((row["step"] / row["epoch"] for row in rows if row["epoch"]), None)


def epochs_of(rows: list[dict[str, float]], per_epoch: float | None = None) -> list[float]:
    """Where each validation row was measured, in epochs of ``per_epoch`` steps (None:
    the rows' own; in steps if none finished)."""
    per_epoch = per_epoch or steps_per_epoch(rows)
    if per_epoch is None:
        return [row["step"] for row in rows]
    return [row["step"] / per_epoch for row in rows]


def epoch_figure(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """k-NN and probe accuracy on the validation split after each epoch, for the
    self-supervised and the label-only student."""
    import matplotlib.pyplot as plt

    curves = [
        (name, validations(run_dir / folder / "metrics.jsonl"), colour)
        for name, folder, colour in (
            ("self-supervised", ".", "tab:blue"),
            ("label-only", "baseline", "tab:gray"),
        )
    ]
    curves = [curve for curve in curves if curve[1]]
    if not curves:
        return {}
    # in epochs of the unlabelled images: the label-only student takes the same steps
    per_epoch = steps_per_epoch(curves[0][1])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, rows, colour in curves:
        epochs = epochs_of(rows, per_epoch)
        for key, style, what in LINES:
            ax.plot(
                epochs,
                [100 * row[key] for row in rows],
                style,
                marker="o",
                color=colour,
                label=f"{name}: {what}",
            )
    xlabel = "epoch (of the unlabelled images)" if per_epoch else "optimizer step"
    ax.set(xlabel=xlabel, ylabel="validation accuracy (%)", title="accuracy against epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / "plots" / "epochs.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    caption = (
        "k-NN and linear-probe accuracy on the validation split after each epoch (both "
        "fitted on the first probe's labelled examples)"
    )
    return {"epochs": (out, caption)}


def feature_figures(run_dir: Path) -> dict[str, tuple[Path, str]]:
    """The label-only and the self-supervised student's test features, projected to 2-D
    and coloured by class, side by side (the labels only colour the points)."""
    import matplotlib.pyplot as plt

    panels = [
        (name, run_dir / folder / PROJECTION)
        for name, folder in (("label-only", "baseline"), ("self-supervised", "."))
        if (run_dir / folder / PROJECTION).exists()
    ]
    if not panels:
        return {}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    for ax, (name, path) in zip(axes[0], panels, strict=True):
        data = json.loads(path.read_text())
        xy = torch.tensor(data["xy"])
        ax.scatter(xy[:, 0], xy[:, 1], c=data["labels"], cmap="tab10", s=4, alpha=0.7)
        ax.set_title(f"{name}: test features, 2 principal components")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = run_dir / "plots" / "features.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    caption = "The students' test features in 2-D (PCA), coloured by class"
    return {"features": (out, caption)}


def probes(summary: dict[str, Any]) -> list[str]:
    """The probe metrics of the summary's models, in the recipe's order."""
    first = next(iter(summary["models"].values()))
    return [key for key in first if key.startswith("probe_")]


def selfsup_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = probes(summary)
    names = [key.removeprefix("probe_") for key in keys]
    header = ["model", "k-NN", *(f"probe {name}" for name in names), "encoder", "train"]
    rows = []
    for key, label, _ in model_rows(summary):
        m = summary["models"][key]
        if key.startswith("export_"):  # the encoder and its first probe, as a graph
            student = summary["models"]["student"]
            m = {keys[0]: m["accuracy"], "encoder_parameters": student["encoder_parameters"]}
        rows.append(
            [
                label.replace("distilled", "self-supervised"),
                known(m.get("knn_accuracy"), "{:.2%}"),
                *(known(m.get(probe), "{:.2%}") for probe in keys),
                known(m.get("encoder_parameters"), "{:,.0f}"),  # what a deployment runs
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


LAYOUT = SummaryLayout(terminal_table=selfsup_table, verdict=selfsup_verdict, figures=figures)
