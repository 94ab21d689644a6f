"""The commands on a finished run directory: ``distill eval`` (with ``--speculative``, the
student as a draft for its teacher), ``distill export``, ``distill sample`` and ``distill
push``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distill.cli.shared import (
    JsonOption,
    QuietOption,
    guarded,
    logger,
    print_table,
)
from distill.methods.speculative import describe_speculative
from distill.runs.commands import eval_command, export_command, sample_command, speculative_command
from distill.runs.hub import push as push_command
from distill.runs.report.tables import export_table


def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by distill run")],
    speculative: Annotated[
        bool,
        typer.Option(
            "--speculative",
            help="causal_lm: the student as a speculative-decoding draft for the teacher "
            "(acceptance, assisted-generation speed)",
        ),
    ] = False,
    row: Annotated[str, typer.Option(help="--speculative: student or baseline")] = "student",
    prompts: Annotated[int, typer.Option(help="--speculative: test prompts timed")] = 8,
    prompt_tokens: Annotated[int, typer.Option(help="--speculative: tokens per prompt")] = 32,
    new_tokens: Annotated[int, typer.Option(help="--speculative: tokens generated")] = 64,
    draft_tokens: Annotated[
        int | None, typer.Option(help="--speculative: draft tokens per round (default: HF's)")
    ] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a run's student on the test split of its recipe's data (with
    --speculative, as a draft for its teacher)."""

    def body() -> None:
        log = logger(quiet, as_json)
        if speculative:
            result = speculative_command(
                run_dir,
                row=row,
                prompts=prompts,
                prompt_tokens=prompt_tokens,
                new_tokens=new_tokens,
                draft_tokens=draft_tokens,
                log=log,
            )
            if as_json:
                typer.echo(json.dumps(result, indent=2))
                return
            rows = [list(pair) for pair in describe_speculative(result)]
            print_table(f"distill eval --speculative: {row}", ["draft", ""], rows)
            return
        metrics, line = eval_command(run_dir)
        if as_json:
            typer.echo(json.dumps(metrics, indent=2))
        else:
            typer.echo(f"{run_dir}: {line}")

    guarded(body)


def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by distill run")],
    stage: Annotated[
        int | None,
        typer.Option(help="compress stage to export (0: the distilled student; default: last)"),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="also ONNX Runtime's int8 version")] = False,
    qdq: Annotated[
        bool,
        typer.Option("--qdq", help="also an int8 QAT stage as static int8 QDQ ONNX, checked"),
    ] = False,
    calibration_examples: Annotated[
        int, typer.Option(help="training inputs that set the QDQ graph's activation ranges")
    ] = 512,
    min_agreement: Annotated[
        float, typer.Option(help="share of test examples whose top-1 must match PyTorch")
    ] = 0.999,
    atol: Annotated[float, typer.Option(help="largest logit difference allowed (float)")] = 1e-3,
    int8_min_agreement: Annotated[
        float, typer.Option(help="top-1 agreement asked of the int8 version")
    ] = 0.97,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a run's student to ONNX, check it in ONNX Runtime against PyTorch on the test
    split (exit 1 if they disagree beyond the tolerances) and measure both."""

    def body() -> None:
        result = export_command(
            run_dir,
            stage=stage,
            int8=int8,
            qdq=qdq,
            calibration_examples=calibration_examples,
            min_agreement=min_agreement,
            atol=atol,
            int8_min_agreement=int8_min_agreement,
            log=logger(quiet, as_json),
        )
        if as_json:
            typer.echo(json.dumps(result, indent=2))
            return
        header, rows = export_table(result)
        print_table(f"distill export: {result['model']}", header, rows)
        typer.echo(f"written: {run_dir / 'export'}")

    guarded(body)


def sample(
    run_dir: Annotated[Path, typer.Argument(help="a diffusion run directory")],
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default: the model's own)")] = None,
    n: Annotated[int, typer.Option("--n", help="images, one class per column")] = 64,
    model: Annotated[str, typer.Option(help="student, teacher or round_<n>")] = "student",
    seed: Annotated[int, typer.Option(help="seeds the noise")] = 0,
    out: Annotated[Path | None, typer.Option(help="the PNG grid")] = None,
    as_json: JsonOption = False,
) -> None:
    """Draw images from a diffusion run's sampler and write them as a PNG grid."""
    result = guarded(sample_command, run_dir, model=model, steps=steps, count=n, seed=seed, out=out)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(
            f"{result['images']} images, {result['model']} in {result['steps']} steps "
            f"({1000 * result['seconds_per_image']:.1f} ms each): {result['path']}"
        )


def push(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by distill run")],
    target: Annotated[
        str,
        typer.Argument(help="a Hub repository id (user/name), or a local folder (/…, ./…, ~…)"),
    ],
    private: Annotated[bool, typer.Option("--private", help="a new Hub repository: private")] = (
        False
    ),
    license: Annotated[
        str | None, typer.Option(help="the model card's license (default: output.license)")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="write the folder and model card, list them, send nothing"),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Write the run's distilled student with a model card to <run>/student/ and send it
    to the Hugging Face Hub (or a local folder). A Hub push needs a token (`hf auth login`
    or HF_TOKEN); if it fails, the folder stays written for a later try."""
    pushed = guarded(
        push_command,
        run_dir,
        target,
        private=private,
        license=license,
        log=logger(quiet, False),
        dry_run=dry_run,
    )
    if not pushed.dry_run:
        typer.echo(f"pushed {pushed.folder} to {pushed.target}")
        return
    size = sum(pushed.files.values())
    typer.echo(
        f"dry run: would push {pushed.folder} ({len(pushed.files)} files, {size / 2**20:.2f} "
        f"MiB) to {pushed.target}; nothing sent"
    )
    for name, nbytes in pushed.files.items():
        typer.echo(f"  {name}  {nbytes:,} bytes")
