"""The report of a diffusion run: every sampler (the teacher's DDIM at its own and at
fewer steps, each distilled student) with its FID and class accuracy under the domain
classifier and its CPU time per image, a plot of FID against steps, and sample grids."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from distill.runs.report import page as report_page
from distill.runs.report.ticks import readable_log_axis

HEADER = [
    "sampler",
    "steps",
    "FID (domain classifier)",
    "class accuracy",
    "CPU ms / image",
    "parameters",
    "train time",
]
TERMINAL = ["sampler", "steps", "FID", "class acc.", "ms/image", "train"]
GRID = "samples.png"  # each student's grid, in its folder


def sampler_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, metrics) of every sampler: the teacher, its DDIM at fewer steps, the
    students in order (rounds, then the final one), a consistency model's multistep."""
    models = summary["models"]
    teacher = models["teacher"]
    rows = [("teacher, DDIM", teacher)]
    rows += [("teacher, DDIM (not distilled)", m) for m in teacher.get("ddim", {}).values()]
    method = summary.get("method", "progressive")
    for key, m in models.items():
        if key == "teacher":
            continue
        rows.append((f"{method} distillation", m))
        rows += [(f"{method} distillation", extra) for extra in m.get("multistep", {}).values()]
    return rows


def _cells(label: str, m: dict[str, Any], parameters: int | None) -> list[str]:
    seconds = m.get("train_seconds")
    return [
        label,
        str(int(m["sampler_steps"])),
        f"{m['fid']:.2f}",
        f"{100 * m['accuracy']:.1f}%",
        f"{1000 * m['seconds_per_image']:.1f}",
        "" if parameters is None else f"{parameters:,}",
        "" if seconds is None else f"{seconds:.0f} s",
    ]


def table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    parameters = summary["models"]["teacher"].get("parameters")
    return HEADER, [_cells(label, m, parameters) for label, m in sampler_rows(summary)]


def terminal_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    _, rows = table(summary)
    return TERMINAL, [[r[0].replace(" distillation", ""), *r[1:5], r[6]] for r in rows]


def plot_fid(summary: dict[str, Any], out: Path) -> None:
    fig = fid_figure(summary)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fid_figure(summary: dict[str, Any]) -> Figure:
    """FID against sampler steps: the teacher's DDIM and each distilled sampler."""
    lines: dict[str, list[tuple[float, float]]] = {}
    for label, m in sampler_rows(summary):
        name = "teacher, DDIM" if label.startswith("teacher") else label
        lines.setdefault(name, []).append((m["sampler_steps"], m["fid"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in lines.items():
        points.sort()
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sampler steps (log scale)",
        title="quality",
        ylabel="FID, domain classifier (log scale)",
    )
    steps = sorted({p[0] for points in lines.values() for p in points})
    readable_log_axis(ax.xaxis, steps, ticks=steps)  # every sampler's step count, no others
    readable_log_axis(ax.yaxis, [p[1] for points in lines.values() for p in points])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_diffusion_report(run_dir: Path, summary: dict[str, Any]) -> dict[str, Path]:
    """report.md and report.html of a diffusion run, the FID plot and its sample grids."""
    fid_plot = run_dir / "plots" / "fid_vs_steps.png"
    if report_page.plots_wanted():
        fid_plot.parent.mkdir(exist_ok=True)
        plot_fid(summary, fid_plot)
    grids = sorted(run_dir.glob(f"*/{GRID}")) + sorted(run_dir.glob(GRID))
    header, rows = table(summary)
    intro = (
        f"Teacher {summary['teacher_model']} on {summary['dataset']} ({summary['regime']}); "
        f"{summary['method']} distillation"
        + (f", rounds {' → '.join(map(str, summary['rounds']))}" if summary.get("rounds") else "")
        + ". FID and class accuracy come from a CNN trained on the real images (FID with a "
        "domain classifier, not Inception-FID: compare rows, not papers); CPU time per image "
        "when sampling in batches."
    )
    md = [f"# distill run: {summary['name']}", "", intro, ""]
    md += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    drawn = fid_plot.exists() and report_page.plots_wanted()
    md += ["", f"![FID against steps](plots/{fid_plot.name})", ""] if drawn else [""]
    md += [f"![samples: {g.parent.name}]({g.relative_to(run_dir)})" for g in grids]
    (run_dir / "report.md").write_text("\n".join(md) + "\n")

    figures = (report_page.figure(fid_plot, "FID against steps") if drawn else "") + "".join(
        report_page.figure(
            g, f"samples: {g.parent.name if g.parent != run_dir else 'student'}", pixels=True
        )
        for g in grids
    )
    body = f"<p>{html.escape(intro)}</p>" + report_page.table(header, rows) + figures
    (run_dir / "report.html").write_text(report_page.page(f"distill run: {summary['name']}", body))
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html"}
    return paths | ({"fid": fid_plot} if drawn else {})
