"""The run report: ``report.md`` and a self-contained ``report.html`` with PNG plots."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from distill.runs.report import page as report_page
from distill.runs.report.tables import (
    COLORS,
    LABELS,
    header,
    is_clip,
    is_language_model,
    layout_of,
    model_rows,
    span,
    table_rows,
)
from distill.runs.report.ticks import count, readable_log_axis

PLOTS = "plots"
TERM_COLORS = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def footnote(summary: dict[str, Any]) -> str:
    if is_language_model(summary):
        measured = (
            "Measured on held-out test rows, used once after training; the students were "
            "selected on separate validation rows. Perplexity: exp of the mean cross-entropy "
            "over scored tokens. Agreement: share of scored tokens where the student's top "
            "token is the teacher's (a draft's acceptance under greedy decoding). Draft "
            "acceptance α: mean over scored tokens of Σ min(p, q), student against teacher at "
            "temperature 1, the share of the student's sampled tokens speculative decoding "
            "would accept. "
        )
        what = "one row"
    elif is_clip(summary):
        measured = (
            "Measured on the test split, used once after training; the students were selected "
            "on validation images by zero-shot accuracy. Zero-shot: the class whose prompt "
            "embedding (mean over the prompt templates) is closest to the image's; linear "
            "probe: logistic regression on the frozen embeddings of training images; R@1: "
            "share of test images whose own caption is the closest of all captions. "
        )
        what = "one image"
    else:
        selected = summary.get("select_metric", "accuracy") is not None
        measured = "Accuracy is on the test split, used once after training; " + (
            "the students were selected on a validation split carved from the training data. "
            if selected
            else "each student is its last step's (none was selected on validation). "
        )
        what = "one example"
    return measured + latency_note(summary, what)


def latency_note(summary: dict[str, Any], what: str) -> str:
    """How latency was measured, and each model's spread (10th to 90th percentile)."""
    spreads = [
        f"{label} {span(m['latency_p10_ms'], m['latency_p90_ms'], '{:.3f}')}"
        for key, label, _ in model_rows(summary)
        if "latency_p10_ms" in (m := summary["models"][key])
    ]
    text = f"Latency: median batch-1 forward of {what} on the CPU"
    if not spreads:
        return text + "."
    return (
        text + ", every model timed back to back at the end of the run after warm-up "
        "forwards; 10th–90th percentile (ms): " + "; ".join(spreads) + "."
    )


def verdict(summary: dict[str, Any]) -> str:
    own = layout_of(summary).verdict
    if own is not None:
        return own(summary)
    if is_language_model(summary):
        models = summary["models"]
        if "baseline" not in models:
            return ""
        base, student = models["baseline"], models["student"]
        text = (
            f"Distillation takes test perplexity from {base['perplexity']:.2f} (labels only) to "
            f"{student['perplexity']:.2f}"
        )
        if student.get("teacher_agreement") is not None:
            text += (
                f", and agreement with the teacher from {100 * base['teacher_agreement']:.1f}% "
                f"to {100 * student['teacher_agreement']:.1f}%"
            )
        own = " (per token of its own tokenizer)" if summary.get("teacher_tokenizer") else ""
        return text + f"; the teacher's perplexity{own} is {models['teacher']['perplexity']:.2f}."
    gain = summary.get("gain_over_baseline")
    if gain is None:
        return ""
    closed = summary.get("gap_closed")
    clip = is_clip(summary)
    against = "the student trained on its captions alone" if clip else "the label-only student"
    what = " of zero-shot accuracy" if clip else ""
    if gain < 0:  # no share of a gap "closed" below zero: say it plainly
        return (
            f"Distillation loses {100 * -gain:.2f} points{what} against {against}: the "
            "distilled student is further from the teacher than the one without it."
        )
    text = f"Distillation gains {100 * gain:.2f} points{what} over {against}"
    if closed is not None:
        text += f" and closes {100 * closed:.0f}% of its gap to the teacher"
    return text + "."


def plot_training_curves(run_dir: Path, out: Path, lm: bool = False) -> None:
    student = read_metrics(run_dir / "metrics.jsonl")
    baseline = read_metrics(run_dir / "baseline" / "metrics.jsonl")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    terms = sorted({k for row in student for k in row if k.startswith("loss/")})
    for key, color in zip(terms, TERM_COLORS * len(terms), strict=False):
        points = [(r["step"], r[key]) for r in student if key in r]
        left.plot(*zip(*points, strict=True), label=f"distilled: {key[5:]}", color=color)
    for key in sorted({k for row in baseline for k in row if k.startswith("loss/")}):
        points = [(r["step"], r[key]) for r in baseline if key in r]
        left.plot(
            *zip(*points, strict=True),
            label=f"baseline: {key[5:]}",
            color=COLORS["baseline"],
            ls="--",
        )
    left.set(
        xlabel="optimizer step",
        ylabel="loss term (unweighted)",
        yscale="log",
        title="training losses",
    )
    left.legend(fontsize=8)
    validation: list[float] = []
    for rows, key in ((baseline, "baseline"), (student, "student")):
        if lm:
            points = [(r["step"], math.exp(r["val/loss"])) for r in rows if "val/loss" in r]
        else:
            points = [(r["step"], 100 * r["val/accuracy"]) for r in rows if "val/accuracy" in r]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=LABELS[key], color=COLORS[key])
            validation += [y for _, y in points]
    if lm:
        right.set(
            xlabel="optimizer step",
            ylabel="validation perplexity",
            yscale="log",
            title="validation perplexity",
        )
        if validation:
            readable_log_axis(right.yaxis, validation)
    else:
        right.set(
            xlabel="optimizer step", ylabel="validation accuracy (%)", title="validation accuracy"
        )
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_accuracy_vs_parameters(summary: dict[str, Any], out: Path) -> None:
    fig = accuracy_vs_parameters(summary)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def accuracy_vs_parameters(summary: dict[str, Any]) -> Figure:
    """Each model's test accuracy (perplexity) against its parameter count."""
    lm = is_language_model(summary)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sizes, scores = [], []
    for key, label, colour in model_rows(summary):
        m = summary["models"][key]
        if m.get("parameters") is None:  # a served teacher: its size is not known here
            continue
        y = m["perplexity"] if lm else 100 * m["accuracy"]
        ax.scatter(m["parameters"], y, s=60, color=colour, label=label)
        sizes.append(m["parameters"])
        scores.append(y)
    ax.set(
        xscale="log",
        xlabel="parameters (log scale)",
        ylabel="test perplexity (log scale)"
        if lm
        else "zero-shot accuracy (%)"
        if is_clip(summary)
        else "test accuracy (%)",
        yscale="log" if lm else "linear",
        title=("perplexity" if lm else "accuracy") + " against size",
    )
    if lm and scores:
        readable_log_axis(ax.yaxis, scores)
    if sizes:
        readable_log_axis(ax.xaxis, sizes, count)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _doctor_html(run_dir: Path) -> str:
    """The doctor's findings and plot, when ``distill doctor`` ran in this directory."""
    path = run_dir / "doctor.json"
    if not path.exists():
        return ""
    result = json.loads(path.read_text())
    rows = "".join(
        f"<tr><td>{html.escape(f['check'])}</td><td>{html.escape(f['verdict'])}</td>"
        f"<td style='text-align:left'>{html.escape(f['summary'])}</td>"
        f"<td style='text-align:left'>{html.escape(f['suggestion'])}</td></tr>"
        for f in result["findings"]
    )
    images = "".join(
        report_page.figure(run_dir / rel, f"doctor: {name}")
        for name, rel in result["plots"].items()
        if (run_dir / rel).exists()
    )
    return (
        f"<h2>Doctor: {html.escape(result['verdict'])}</h2><table><tr><th>check</th>"
        f"<th>verdict</th><th>measured</th><th>suggestion</th></tr>{rows}</table>{images}"
    )


def write_report(run_dir: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Write the plots, report.md and report.html; returns their paths."""
    own = layout_of(summary).write_report  # e.g. samplers, not classifiers
    if own is not None:
        return own(run_dir, summary)
    plots = run_dir / PLOTS
    figures = {
        "training_curves": (
            plots / "training_curves.png",
            "Training losses per term and validation "
            + ("perplexity" if is_language_model(summary) else "accuracy"),
        ),
        "accuracy_vs_parameters": (
            plots / "accuracy_vs_parameters.png",
            ("Test perplexity" if is_language_model(summary) else "Test accuracy")
            + " against parameter count",
        ),
    }
    if report_page.plots_wanted():
        plots.mkdir(exist_ok=True)
        plot_training_curves(run_dir, figures["training_curves"][0], is_language_model(summary))
        plot_accuracy_vs_parameters(summary, figures["accuracy_vs_parameters"][0])
        own_figures = layout_of(summary).figures
        if own_figures is not None:  # e.g. a picture of the student's features
            figures |= own_figures(run_dir, summary)
    else:
        figures = {}

    title = f"distill run: {summary['name']}"
    intro = [
        summary.get("description") or "",
        f"Data: {summary['dataset']}, {summary['regime']}.",
        f"Teacher {summary['teacher_model']}, student {summary['student_model']}, objective "
        + ", ".join(f"{k} ({v})" for k, v in summary["objective"].items())
        + f"; {summary['steps']} optimizer steps for each student, same seed.",
        f"Text tower {summary['text_tower']} (frozen); the teacher's logit scale is "
        f"{summary['logit_scale']:.1f}."
        if is_clip(summary)
        else "",
        verdict(summary),
        summary.get("data_note") or "",  # e.g. PATE's (ε, δ) and what it covers
        "" if figures else f"No plots: ${report_page.PLOTS_SETTING} is 0.",
    ]
    rows, columns, note = table_rows(summary), header(summary), footnote(summary)
    md = [f"# {title}", "", *[p for p in intro if p], "", markdown_table(columns, rows), ""]
    for path, caption in figures.values():
        md += [f"![{caption}]({PLOTS}/{path.name})", ""]
    md.append(note)
    doctor = run_dir / "doctor.md"  # written by distill doctor
    if doctor.exists():
        md += ["", doctor.read_text()]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")

    images = "".join(
        report_page.figure(path, f"{caption} ({PLOTS}/{path.name})", anchor=name)
        for name, (path, caption) in figures.items()
    )
    paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in intro if p)
    body = paragraphs + report_page.table(columns, rows) + images
    body += f"<p>{html.escape(note)}</p>{_doctor_html(run_dir)}"
    page = report_page.page(title, body)
    (run_dir / "report.html").write_text(page)
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html"}
    return paths | {k: v[0] for k, v in figures.items()}
