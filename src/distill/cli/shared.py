"""What the ``distill`` commands share: the consoles, the common options, one-line
failures, the notes' logger and the summary table."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import tqdm.std
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distill.compress.export import ParityError
from distill.errors import DistillError
from distill.recipes import Recipe
from distill.runs.driver import run_recipe
from distill.runs.report.document import verdict
from distill.runs.report.tables import terminal_table
from distill.training.distributed import on_main

# no emoji codes: a model named hf-config:llama must not print as "hf-config🦙"; text from
# the user (names, paths, messages) goes through ``escape`` so "[...]" is not read as markup
out_console = Console(emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a recipe field: --set train.epochs=5 (repeatable)"),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or notes")]
JsonOption = Annotated[bool, typer.Option("--json", help="print only a JSON result on stdout")]
RestartOption = Annotated[
    bool,
    typer.Option(
        "--restart",
        help="start over in a run directory an earlier run used (by default a rerun continues "
        "where it stopped: finished students reused, an interrupted one resumed)",
    ),
]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="run directory (default: <output.dir>/<name>)")
]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def guarded(fn, *args: Any, **kwargs: Any) -> Any:
    """Run a command body, turning the failures distill explains (its own error types, and
    a file the user named that does not exist) into one line and an exit code; anything
    else, a bug, keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except ParityError as error:  # the exported model does not match: a failed check
        fail(str(error), code=1)
    except (DistillError, FileNotFoundError) as error:
        fail(str(error))
    except KeyboardInterrupt as error:
        fail(f"interrupted: {error}" if str(error) else "interrupted", code=130)


# the progress bars and notes of the libraries distill drives (transformers, the hub, gguf's
# tqdm): read when those libraries are imported, which is later, by the command
QUIET_LIBRARIES = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_libraries() -> None:
    """Silence the libraries distill drives, for --quiet and --json: their progress bars
    (tqdm, the Hub's, transformers' "Loading weights" and "Writing model shards"), their
    notes through logging (torch's, torchao's failed kernel loads, ONNX Runtime's
    quantizer through the root logger) and their warnings (deprecations, Opacus'). distill's
    own warnings and every error still show."""
    for name, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(name, value)
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("torch", "torchao", "transformers", "accelerate", "opacus", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(?!distill\b)")  # any other package's
    # tqdm reads TQDM_DISABLE when it is first imported, which may have happened: every
    # bar now starts disabled unless its caller asks otherwise (gguf's de-quantizing)
    if not getattr(tqdm.std.tqdm, "distill_quiet", False):
        tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        tqdm.std.tqdm.distill_quiet = True
    if "transformers" in sys.modules:  # imported already: its settings were read then
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def logger(quiet: bool, as_json: bool):
    """Where a command's notes go: stderr, or nowhere with --quiet / --json (then the
    libraries are silenced too: ``quiet_libraries``)."""
    if quiet or as_json:
        quiet_libraries()

    def log(message: str) -> None:
        if not quiet and not as_json:
            err_console.print(f"[dim]·[/] {escape(message)}", highlight=False)

    return log


def print_table(
    title: str,
    header: list[str],
    rows: list[list[str]],
    styles: list[str | None] | None = None,
    console: Console | None = None,
) -> None:
    """A table of text at the console's width (a pipe's or a CI log's: 80 columns): the
    first column names the row and wraps between words; each other column is as wide as
    its header and its widest value, so no value or header is cut to "…". A table that
    cannot fit even so is printed wider (a long line in a log beats a cut number). Cells
    are the user's text, not markup."""
    console = console or out_console
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE, pad_edge=False)
    words = [len(word) for row in rows for word in row[0].split()] + [len(header[0])]
    name_width = min(max(words), 20)  # a word longer than 20 characters folds
    table.add_column(escape(header[0]), overflow="fold", min_width=name_width, ratio=1)
    widths = [
        max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(header) if i > 0
    ]
    for column, width in zip(header[1:], widths, strict=True):
        table.add_column(escape(column), justify="right", width=width, no_wrap=True)
    for row, style in zip(rows, styles or [None] * len(rows), strict=True):
        table.add_row(*map(escape, row), style=style)
    least = name_width + sum(widths) + 3 * len(header) - 1  # edges, dividers and padding
    width = console.width
    console.width = max(width, least)
    try:
        console.print(table)
    finally:
        console.width = width


def print_summary_table(summary: dict[str, Any], console: Console | None = None) -> None:
    header, rows = terminal_table(summary)
    styles = ["bold green" if row[0] == "student, distilled" else None for row in rows]
    named = [[row[0].removeprefix("student, "), *row[1:]] for row in rows]
    print_table(f"distill: {summary['name']}", header, named, styles, console)


def print_summary(summary: dict[str, Any], run_dir: Path, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({**summary, "run_dir": str(run_dir)}, indent=2))
        return
    print_summary_table(summary)
    if summary.get("gain_over_baseline") is not None:
        typer.echo(verdict(summary))
    typer.echo(f"report: {run_dir / 'report.html'}  (and report.md)")


def run_and_print(
    recipe: Recipe, out: Path | None, quiet: bool, as_json: bool, restart: bool
) -> None:
    run_dir = out or recipe.output.dir / recipe.name
    log = logger(quiet, as_json)
    summary = run_recipe(
        recipe, out_dir=run_dir, progress=not (quiet or as_json), log=log, restart=restart
    )
    on_main(lambda: print_summary(summary, run_dir, as_json))  # one table, not one per process
