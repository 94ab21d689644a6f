"""The doctor's plots: reliability diagram, soft targets by temperature, and the teacher's
view of transfer vs target data."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from distill.doctor.checks import Finding

PLOTS = "plots"


def _save(fig, out_dir: Path, name: str) -> Path:
    folder = out_dir / PLOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"doctor_{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_findings(findings: list[Finding], out_dir: Path) -> dict[str, Path]:
    """One figure of four panels; returns {"doctor": path}."""
    by_check = {f.check: f.measurements for f in findings}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    _temperature(axes[0], by_check["temperature"])
    _reliability(axes[1], by_check["overconfidence"])
    _confidence(axes[2], by_check["data_shift"])
    _classes(axes[3], by_check["data_shift"])
    return {"doctor": _save(fig, out_dir, "checks")}


def _temperature(ax, m: dict[str, Any]) -> None:
    temps = [float(t) for t in m["by_temperature"]]
    shares = [v["off_top_share"] for v in m["by_temperature"].values()]
    ax.plot(temps, shares, "o-", color="#d62728")
    ax.axhspan(0.05, 0.8, color="#2ca02c", alpha=0.08, label="useful band")
    ax.axvline(m["temperature"], color="#444444", ls="--", label=f"recipe T = {m['temperature']:g}")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="temperature T",
        ylabel="off-top share of soft targets",
        ylim=(0, 1),
        title="Soft targets by temperature",
    )
    ax.legend(fontsize=8)


def _reliability(ax, m: dict[str, Any]) -> None:
    bins = m["diagram"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.05
    ax.bar(
        centres, [b["accuracy"] for b in bins], width=width * 0.9, color="#1f77b4", label="accuracy"
    )
    ax.plot([0, 1], [0, 1], color="#444444", ls="--", label="calibrated")
    ax.set(
        xlabel="teacher confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability (ECE {m['ece']:.3f})",
    )
    ax.legend(fontsize=8)


def _confidence(ax, m: dict[str, Any]) -> None:
    edges = m["confidence_edges"]
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    for key, label, colour, shift in (
        ("transfer_confidence_hist", "transfer", "#d62728", -0.02),
        ("target_confidence_hist", "target (test)", "#1f77b4", 0.02),
    ):
        counts = m[key]
        total = sum(counts) or 1
        ax.bar(
            [c + shift for c in centres],
            [c / total for c in counts],
            width=0.04,
            color=colour,
            label=label,
        )
    ax.set(
        xlabel="teacher confidence",
        ylabel="share of inputs",
        title=f"Teacher confidence (domain AUC {m['domain_auc']:.2f})",
    )
    ax.legend(fontsize=8)


def _classes(ax, m: dict[str, Any]) -> None:
    classes = list(range(len(m["transfer_classes"])))
    ax.bar(
        [c - 0.2 for c in classes],
        m["transfer_classes"],
        width=0.4,
        color="#d62728",
        label="transfer",
    )
    ax.bar(
        [c + 0.2 for c in classes],
        m["target_classes"],
        width=0.4,
        color="#1f77b4",
        label="target (test)",
    )
    ax.set(
        xlabel="class the teacher predicts",
        ylabel="share of inputs",
        title=f"Predicted classes (shift {100 * m['class_shift_tv']:.0f}%)",
    )
    ax.legend(fontsize=8)


def plot_sweep(sweep: dict[str, Any], out_dir: Path) -> Path:
    temps = [float(t) for t in sweep["val_accuracy"]]
    accuracy = [100 * a for a in sweep["val_accuracy"].values()]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.plot(temps, accuracy, "o-", color="#d62728")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="temperature T",
        ylabel="validation accuracy (%)",
        title=f"Temperature sweep ({sweep['steps']} steps each)",
    )
    return _save(fig, out_dir, "sweep")


def plot_language(findings: list[Finding], out_dir: Path) -> dict[str, Path]:
    """A language-model recipe's figure: the teacher's mass a top-k keeps, the chat rows'
    lengths against seq_len and the soft targets by temperature, where measured."""
    by_check = {f.check: f.measurements for f in findings}
    panels = []
    if by_check.get("top_k_mass", {}).get("by_k"):
        panels.append((_top_k_mass, by_check["top_k_mass"]))
    if by_check.get("truncation", {}).get("lengths"):
        panels.append((_lengths, by_check["truncation"]))
    if "temperature" in by_check:
        panels.append((_temperature, by_check["temperature"]))
    if not panels:
        return {}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (draw, measurements) in zip(axes[0], panels, strict=True):
        draw(ax, measurements)
    return {"doctor": _save(fig, out_dir, "checks")}


def _top_k_mass(ax, m: dict[str, Any]) -> None:
    ks = sorted(int(k) for k in m["by_k"])
    ax.plot(ks, [m["by_k"][str(k)]["mean"] for k in ks], "o-", color="#d62728", label="mean")
    ax.plot(ks, [m["by_k"][str(k)]["p5"] for k in ks], "o--", color="#ff9896", label="5th pct.")
    if m.get("k"):
        kind = m.get("sparse") or "k"
        ax.axvline(m["k"], color="#444444", ls="--", label=f"{kind}: k = {m['k']}")
    ax.axhline(0.95, color="#2ca02c", alpha=0.4, label="95%")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="k (most likely tokens kept)",
        ylabel="teacher mass kept",
        ylim=(0, 1.02),
        title=f"Top-k mass at T = {m['temperature']:g}",
    )
    ax.legend(fontsize=8)


def _lengths(ax, m: dict[str, Any]) -> None:
    ax.hist(m["lengths"], bins=30, color="#1f77b4")
    ax.axvline(m["seq_len"] + 1, color="#d62728", ls="--", label=f"seq_len {m['seq_len']}")
    ax.set(
        xlabel="tokens per chat row (prompt + answer)",
        ylabel="rows",
        title=f"Row lengths ({100 * m['cut_share']:.0f}% cut)",
    )
    ax.legend(fontsize=8)
