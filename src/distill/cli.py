"""The ``distill`` command."""

from __future__ import annotations

import typer

import distill

app = typer.Typer(
    help="distill: knowledge distillation for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the installed distill version."""
    typer.echo(distill.__version__)


@app.command()
def losses() -> None:
    """List the built-in losses with the first line of their docstring."""
    from distill import losses as loss_module

    for name in loss_module.__all__:
        doc = (getattr(loss_module, name).__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:24s} {doc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
