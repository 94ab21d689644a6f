"""The HTML of a run's report, the same for every kind of run: one self-contained page
(its stylesheet inline, its plots embedded as PNG) and its tables and figures."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

PLOTS_SETTING = "DISTILL_PLOTS"  # "0": reports without their plots (sweeps, test suites)


def plots_wanted() -> bool:
    """Whether reports draw their plots: yes, unless ``$DISTILL_PLOTS`` is ``0`` (a
    report's tables and numbers do not change; drawing is about 0.3 s a report)."""
    return os.environ.get(PLOTS_SETTING, "1") != "0"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}"
    "img{max-width:100%}figure{margin:1.5em 0}"
    "img.pixels{image-rendering:pixelated;width:100%}"
)


def page(title: str, body: str) -> str:
    """A whole page: ``title`` as its title and heading, then ``body`` (HTML)."""
    title = html.escape(title)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>{body}\n</body></html>\n"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def figure(path: Path, caption: str, anchor: str | None = None, pixels: bool = False) -> str:
    """``path`` (a PNG) embedded, with its caption; ``pixels``: a grid of small images,
    shown at the page's width without blurring them."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    attributes = (f' id="{anchor}"' if anchor else "") + (' class="pixels"' if pixels else "")
    return (
        f'<figure><img{attributes} alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
        "</figure>"
    )
