"""The ``distill`` command: demo, run, search, teacher, cache, generate, doctor, eval, export,
sample, losses, version."""

from __future__ import annotations

import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

import distill
from distill.cli import finished
from distill.cli.shared import (
    JsonOption,
    OutOption,
    QuietOption,
    RestartOption,
    SetOption,
    guarded,
    logger,
    out_console,
    print_table,
    run_and_print,
)
from distill.data import fashion_mnist_available
from distill.doctor.run import diagnose, title
from distill.losses import LOSSES
from distill.methods.generated_data import read_generations
from distill.recipes import load_recipe
from distill.runs.commands import cache_command, generate_command, teacher_command
from distill.runs.search.report import final_value, shown_metrics
from distill.runs.search.run import Options, search_recipe
from distill.runs.search.space import describe
from distill.runs.table import task_for
from distill.training.distributed import process_group_ended

app = typer.Typer(
    help="distill: knowledge distillation for PyTorch. Start with `distill demo`.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def demo(
    out: OutOption = None,
    seed: Annotated[int, typer.Option(help="seed of the students and the teacher")] = 0,
    set_: SetOption = None,
    restart: RestartOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run the embedded default, offline, in a few minutes on a laptop CPU.

    Trains (or reuses from the cache) a CNN teacher, then a label-only student and a
    distilled student with the same seed and budget; prints a table and writes a report.
    Uses Fashion-MNIST when its files are on this machine, MNIST-1D otherwise.
    """
    log = logger(quiet, as_json)
    if fashion_mnist_available():
        name = "demo_fashion_mnist.yaml"
        log("Fashion-MNIST found: the demo uses it")
    else:
        name = "demo_mnist1d.yaml"
        log(
            "Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or $DISTILL_DATA): "
            "the demo uses MNIST-1D, generated offline"
        )
    path = resources.files("distill.recipes").joinpath(name)
    recipe = guarded(load_recipe, Path(str(path)), [f"seed={seed}", *(set_ or [])])
    guarded(run_and_print, recipe, out, quiet, as_json, restart)
    if not (quiet or as_json):
        typer.echo(
            "Why distillation helps here: the student owns few labels and the teacher labels "
            "the rest of the training inputs for it (Hinton's transfer set). With every label "
            "available the gain is small: try `distill run recipes/fashion_mnist_all_labels.yaml`."
        )


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    set_: SetOption = None,
    out: OutOption = None,
    restart: RestartOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Distil as the recipe says: teacher, label-only student, distilled student, report.

    Rerun into the same run directory, it continues where an earlier run stopped (finished
    students reused, an interrupted one resumed from its last checkpoint); --restart starts
    over. A run directory in use by another run, or holding another recipe's run, is refused.
    """
    loaded = guarded(load_recipe, recipe, set_ or [])
    guarded(run_and_print, loaded, out, quiet, as_json, restart)


@app.command()
def search(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with a search section")],
    set_: SetOption = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="trials in all (default: search.trials)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="stop starting trials after this many seconds")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="trials at once (threads of this process)")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL several machines share, e.g. postgresql://user:pw@host/db "
            "(default: SQLite in the run directory)"
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="run directory (default: <output.dir>/<name>-search)"),
    ] = None,
    restart: RestartOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Search the student's architecture under the recipe's budget, then distil the best.

    Each trial builds a candidate from search.candidates, measures it (parameters, CPU
    latency, memory) against search.budget, and distils it briefly; the median pruner stops
    weak trials. The study is in <run dir>/study.db: rerun the same command to continue a
    killed search. The chosen student and the recipe's own are then distilled fully.
    """

    def body() -> None:
        loaded = load_recipe(recipe, set_ or [])
        log = logger(quiet, as_json)
        options = Options(trials, timeout, jobs, storage, progress=not (quiet or as_json))
        summary = search_recipe(loaded, out_dir=out, options=options, log=log, restart=restart)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        final = summary["final"]
        shown = shown_metrics(summary)
        header = ["student", "params", "CPU ms / ex.", *(f"test {m}" for m in shown)]
        rows = [
            [
                f"{row.replace('_', '-')}: {describe(result['student'])}",
                f"{result['parameters']:,}",
                f"{result['latency_ms']:.4g}",
                *(final_value(result, m) for m in shown),
            ]
            for row, result in final.items()
        ]
        print_table(f"distill search: {summary['name']}", header, rows)
        run_dir = out or loaded.output.dir / f"{loaded.name}-search"
        typer.echo(f"report: {run_dir / 'search.md'}  (and pareto.png, search.json, study.db)")

    guarded(body)


@app.command()
def teacher(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    set_: SetOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train or fine-tune the recipe's teacher and cache it for `distill run`.

    Uses the recipe's teacher.train settings on the labelled training split; the weights
    go to the teacher cache ($DISTILL_CACHE or ~/.cache/distill), keyed by the teacher,
    data and seed, where `distill run` and `distill demo` find them.
    """

    def body() -> None:
        loaded = load_recipe(recipe, set_ or [])
        log = logger(quiet, as_json)
        result = teacher_command(loaded, progress=not (quiet or as_json), log=log)
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            typer.echo(
                f"teacher {result['model']}: {task_for(loaded).describe_teacher(result)} in "
                f"{result['train_seconds']:.0f} s; saved to {result['cache']}"
            )

    guarded(body)


@app.command()
def cache(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with a cache: section")],
    set_: SetOption = None,
    worker: Annotated[int, typer.Option(help="this machine's index, from 0")] = 0,
    workers: Annotated[int, typer.Option(help="machines sharing the build, by shard")] = 1,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run the recipe's teacher once and store its answers: the teacher-output cache.

    For a language model, its top-k token log-probabilities (cache.top_k) and the tail mass
    per position; for a classifier, its logits; in checksummed shards under cache.dir.
    Rerun to resume a killed build; with --worker I --workers N, N machines each build
    every N-th shard into one folder (shared, or copied together); the last to finish
    writes the manifest. A recipe with cache.use then trains its student against it.
    """

    def body() -> None:
        loaded = load_recipe(recipe, set_ or [])
        log = logger(quiet, as_json)
        result = cache_command(
            loaded, worker=worker, workers=workers, progress=not (quiet or as_json), log=log
        )
        manifest = result["manifest"]
        if as_json:
            typer.echo(json.dumps(result, indent=2, default=str))
        elif manifest is None:
            typer.echo(f"{result['folder']}: this worker's shards are done; others still missing")
        else:
            per = manifest.get("bytes_per_token") or manifest.get("bytes_per_example")
            unit = "token" if "bytes_per_token" in manifest else "example"
            typer.echo(
                f"{result['folder']}: {manifest['num_examples']:,} examples in "
                f"{len(manifest['shards'])} shards, {manifest['bytes'] / 2**20:.1f} MiB, "
                f"{per:.0f} bytes per {unit}"
            )

    guarded(body)


@app.command()
def generate(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with a generate: section")],
    set_: SetOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Make the teacher answer the recipe's prompts: a chat dataset for sequence-level KD.

    Renders each prompt with the tokenizer's chat template, generates in batches
    (transformers; vLLM with generate.backend vllm, or auto when installed), and writes
    generate.out (default <output.dir>/<name>/generated.jsonl) with a provenance file. A
    killed run, rerun, continues where it stopped. Train on it with data.source: generated.
    """

    def body() -> dict[str, Any]:
        loaded = load_recipe(recipe, set_ or [])
        log = logger(quiet, as_json)
        path = generate_command(loaded, progress=not (quiet or as_json), log=log)
        rows, provenance = read_generations(path)
        return {"path": str(path), "rows": len(rows), "provenance": provenance}

    result = guarded(body)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        seconds = result["provenance"].get("seconds", 0.0)
        typer.echo(f"{result['path']}: {result['rows']} answers in {seconds:.0f} s")


@app.command()
def doctor(
    target: Annotated[Path, typer.Argument(help="a recipe YAML file or a run directory")],
    set_: SetOption = None,
    sweep: Annotated[
        bool,
        typer.Option("--sweep", help="also train short KD runs at T = 1, 2, 4, 8 (classifiers)"),
    ] = False,
    sample: Annotated[
        int, typer.Option(help="inputs per split (language models: chat rows) the checks read")
    ] = 2000,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Diagnose why distillation might do nothing, each check measured, judged and with a
    fix. Classification and CLIP: temperature, teacher overconfidence, capacity gap, data
    shift and teacher cost. Language models: vocabulary, chat template and stop tokens,
    sequence length, top-k mass, temperature, sampling vs loss temperature, teacher mode,
    gradient accumulation and teacher cost per token.

    Writes doctor.json, doctor.md and plots into the run directory (for a recipe:
    <output.dir>/<name>), where the run's report shows them. Exits 1 when a check finds a
    problem.
    """

    def body() -> dict[str, Any]:
        run_dir = None
        path = target
        if target.is_dir():
            run_dir, path = target, target / "recipe.yaml"
        loaded = load_recipe(path, set_ or [])
        log = logger(quiet, as_json)
        return diagnose(
            loaded, run_dir, sweep=sweep, sample=sample, progress=not (quiet or as_json), log=log
        )

    result = guarded(body)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        styles = {"ok": "green", "warning": "yellow", "problem": "bold red"}
        for f in result["findings"]:
            style = styles[f["verdict"]]
            out_console.print(f"[{style}]{f['verdict']:>7}[/]  [bold]{title(f['check'])}[/]")
            out_console.print(f"         {escape(f['summary'])}", highlight=False)
            if f["verdict"] != "ok":
                out_console.print(
                    f"         [{style}]→[/] {escape(f['suggestion'])}", highlight=False
                )
        out_console.print(
            f"overall: [{styles[result['verdict']]}]{result['verdict']}[/]; details and plots "
            f"in {escape(result['out_dir'])}/doctor.md"
        )
    if result["verdict"] == "problem":
        raise typer.Exit(1)


app.command("eval")(finished.eval_)
app.command()(finished.export)
app.command()(finished.sample)
app.command()(finished.push)


@app.command()
def version(as_json: JsonOption = False) -> None:
    """Print the installed distill version."""
    if as_json:
        typer.echo(json.dumps({"version": distill.__version__}))
    else:
        typer.echo(distill.__version__)


@app.command()
def losses(as_json: JsonOption = False) -> None:
    """List the built-in losses with the first line of their docstring."""
    if as_json:
        typer.echo(json.dumps({name: info.to_json() for name, info in LOSSES.items()}, indent=2))
        return
    for name, info in LOSSES.items():
        typer.echo(f"{name:24s} {info.summary}")


def reflowed(text: str) -> str:
    """A docstring's paragraphs, each on one line: the help wraps them to the terminal
    (Typer keeps a docstring's line breaks after its first paragraph, so at 80 columns a
    sentence broke after every source line)."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


for _command in app.registered_commands:
    _command.help = reflowed(_command.help or _command.callback.__doc__ or "")


def main() -> None:
    with process_group_ended():
        app()


if __name__ == "__main__":
    main()
