"""The rows of a run's results table: which models, in which order and colour, and each
row's cells for the report (markdown) and for an 80-column terminal; and how each kind of
run's summary reads (``SummaryLayout``, which a kind of run registers for its name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SummaryLayout:
    """How a kind of run's summary reads: by test accuracy (the default), by perplexity
    (``headline``), with a CLIP student's zero-shot columns (``zero_shot``), or with a
    report and terminal table of its own (``write_report``, ``terminal_table``), its own
    one-line verdict (``verdict``) and its own figures in the generic report (``figures``:
    name -> (PNG path, caption), given the run folder and the summary)."""

    headline: str = "accuracy"
    zero_shot: bool = False
    write_report: Callable[[Path, dict[str, Any]], dict[str, Path]] | None = None
    terminal_table: Callable[[dict[str, Any]], tuple[list[str], list[list[str]]]] | None = None
    verdict: Callable[[dict[str, Any]], str] | None = None
    figures: Callable[[Path, dict[str, Any]], dict[str, tuple[Path, str]]] | None = None


LAYOUTS: dict[str, SummaryLayout] = {}


def register_layout(task: str, layout: SummaryLayout) -> None:
    """``task``'s summaries read as ``layout`` (called by the kind of run's module)."""
    LAYOUTS[task] = layout


def layout_of(summary: dict[str, Any]) -> SummaryLayout:
    """The layout of the kind of run that wrote ``summary`` (a classifier's summary names
    no task)."""
    return LAYOUTS.get(summary.get("task") or "", SummaryLayout())


LABELS = {"teacher": "teacher", "baseline": "student, labels only", "student": "student, distilled"}
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def span(low: float, high: float, form: str = "{:,}") -> str:
    """A range as a person writes it: ``5,300`` when both ends are equal, else ``a–b``."""
    first, last = form.format(low), form.format(high)
    return first if first == last else f"{first}–{last}"


def model_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, colour) of every model in the summary: the teacher, any assistant,
    generations or peers, the label-only student, the distilled student, then its
    compression stages ("+ 1 prune", …)."""
    models = summary["models"]
    # compression stages and exports come after the student, in order
    stages = [k for k in models if k.startswith(("compress_", "export_"))]
    extras = [k for k in models if k not in LABELS and k not in stages]
    order = [k for k in ("teacher",) if k in models] + extras
    order += [k for k in ("baseline", "student") if k in models] + stages
    rows = []
    for key in order:
        if key == "baseline" and is_clip(summary):
            rows.append((key, "student, captions only", COLORS[key]))
        elif key in LABELS:  # a run may name its rows (a PATE run's teacher is a vote)
            rows.append((key, summary.get("row_labels", {}).get(key, LABELS[key]), COLORS[key]))
        else:
            colour = EXTRA_COLORS[(extras + stages).index(key) % len(EXTRA_COLORS)]
            label = key.removeprefix("compress_").replace("_", " ")
            if key.startswith("export_"):
                label = {
                    "export_onnx": "ONNX",
                    "export_onnx_int8": "ONNX int8",
                    "export_onnx_qdq": "ONNX QDQ int8 (the QAT student)",
                }.get(key, label)
            elif key in stages:
                label = f"+ {label}"
            rows.append((key, label, colour))
    return rows


COLORS = {"teacher": "#444444", "baseline": "#1f77b4", "student": "#d62728"}


def is_language_model(summary: dict[str, Any]) -> bool:
    return layout_of(summary).headline == "perplexity"


def is_clip(summary: dict[str, Any]) -> bool:
    return layout_of(summary).zero_shot


def _percent(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{100 * value:.{digits}f}%"


def known(value: float | None, form: str, unit: float = 1) -> str:
    """``value / unit`` in ``form``, or "—" for what is not known here (a served teacher's
    size and latency)."""
    return "—" if value is None else form.format(value / unit if unit != 1 else value)


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    lm = is_language_model(summary)
    rows = []
    for key, label, _ in model_rows(summary):
        m = summary["models"][key]
        kl = m.get("kl_to_teacher")
        agreement = m.get("teacher_agreement")
        headline = (
            [
                f"{m['perplexity']:.2f}",
                "" if agreement is None else f"{100 * agreement:.1f}%",
                "" if m.get("acceptance") is None else f"{m['acceptance']:.3f}",
                f"{100 * m['accuracy']:.1f}%",
            ]
            if lm
            else [f"{100 * m['accuracy']:.2f}%"]
        )
        if is_clip(summary):  # the embeddings' quality besides zero-shot accuracy
            headline += [_percent(m.get("linear_probe")), _percent(m.get("image_to_text_r1"), 1)]
        rows.append(
            [
                label,
                *headline,
                known(m.get("parameters"), "{:,}"),
                known(m.get("size_bytes"), "{:,.0f} KiB", 1024),
                known(m.get("latency_ms"), "{:.3f} ms"),
                "" if kl is None or key == "teacher" else f"{kl:.3f}",
                f"{m.get('train_seconds', 0.0):.0f} s",
            ]
        )
    return rows


# the terminal's columns, short enough for an 80-column terminal
TERMINAL_HEADER = ["model", "test acc.", "params", "size", "CPU ms/ex.", "KL to T", "train"]
TERMINAL_HEADER_LM = ["model", "ppl", "agree", "tok. acc.", "params", "MiB", "ms/seq", "train"]


def terminal_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The summary table for a terminal: (header, rows)."""
    own = layout_of(summary).terminal_table
    if own is not None:
        return own(summary)
    if is_clip(summary):  # without recall and size, to fit 80 columns
        rows = [row[:3] + row[4:5] + row[6:] for row in table_rows(summary)]
        return ["model", "zero-shot", "probe", "params", *TERMINAL_HEADER[4:]], rows
    if not is_language_model(summary):
        return TERMINAL_HEADER, table_rows(summary)
    rows = []
    for key, label, _ in model_rows(summary):
        m = summary["models"][key]
        agreement = m.get("teacher_agreement")
        rows.append(
            [
                label,
                f"{m['perplexity']:.2f}",
                "" if agreement is None else f"{100 * agreement:.1f}%",
                f"{100 * m['accuracy']:.1f}%",
                known(m.get("parameters"), "{:.1f}M", 1e6),
                known(m.get("size_bytes"), "{:.1f}", 2**20),
                known(m.get("latency_ms"), "{:.1f}"),
                f"{m.get('train_seconds', 0.0):.0f} s",
            ]
        )
    return TERMINAL_HEADER_LM, rows


def export_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``distill export``'s result as a terminal table: (header, rows)."""
    names = {
        "pytorch": "PyTorch",
        "onnx": "ONNX",
        "onnx_int8": "ONNX int8",
        "onnx_qdq": "ONNX QDQ int8",
    }
    rows = [
        [
            names[key],
            f"{100 * row['accuracy']:.2f}%",
            "" if row.get("agreement") is None else f"{100 * row['agreement']:.2f}%",
            f"{row['size_bytes'] / 1024:.0f} KiB",
            f"{row['latency_ms']:.3f}",
        ]
        for key, row in result["models"].items()
    ]
    return ["format", "test acc.", "agreement", "size", "CPU ms/ex."], rows


def header(summary: dict[str, Any]) -> list[str]:
    if is_language_model(summary):
        headline = [
            "test perplexity",
            "agreement with teacher",
            "draft acceptance α",
            "token accuracy",
        ]
        latency = "CPU latency / sequence"
    elif is_clip(summary):
        headline = ["zero-shot accuracy", "linear probe", "image→text R@1"]
        latency = "CPU latency / image"
    else:
        headline, latency = ["test accuracy"], "CPU latency / example"
    return [
        "model",
        *headline,
        "parameters",
        "size on disk",
        latency,
        "KL to teacher",
        "train time",
    ]
