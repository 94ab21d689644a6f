"""Every command on a tiny budget, on real digits images in Fashion-MNIST's file format."""

import json
import os

import pytest
import typer
from typer.testing import CliRunner

import distill
from distill import cli

runner = CliRunner()

TINY = [
    "data.labeled=300",
    "data.batch_size=64",
    "teacher.train.epochs=1",
    "teacher.train.max_steps=8",
    "train.max_steps=8",
    "output.latency_repeats=3",
]


def invoke(*args):
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_version_and_losses_commands():
    assert distill.__version__ in invoke("version").output
    listed = invoke("losses").output
    for name in distill.losses.__all__:
        assert (name in listed) == name.islower()  # losses, not the TopK type


@pytest.mark.e2e
def test_demo_teacher_run_and_eval(digits_as_fashion, isolated_cache, tmp_path, plots):
    sets = [arg for s in TINY for arg in ("--set", s)]
    demo = invoke("demo", "--out", tmp_path / "demo", "--json", *sets)
    summary = json.loads(demo.output)
    assert summary["dataset"] == "fashion_mnist"
    assert set(summary["models"]) == {"teacher", "baseline", "student"}
    assert summary["steps"] == 8
    models = summary["models"]
    for model in models.values():  # trained: above chance (10 classes), and measured
        assert model["accuracy"] > 0.15 and model["parameters"] > 0
        assert model["size_bytes"] > 0 and model["latency_ms"] > 0
    # 8 steps of KD bring the student nearer its teacher than 8 steps of labels do
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]

    run_dir = tmp_path / "demo"
    for name in ("recipe.yaml", "summary.json", "metrics.jsonl", "student.safetensors",
                 "report.md", "report.html", "plots/training_curves.png",
                 "plots/accuracy_vs_parameters.png", "baseline/metrics.jsonl"):  # fmt: skip
        assert (run_dir / name).exists(), name
    page = (run_dir / "report.html").read_text()
    for plot in ("training_curves", "accuracy_vs_parameters"):
        assert f'id="{plot}"' in page and f"plots/{plot}.png" in page
    assert page.count("data:image/png;base64,") == 2  # self-contained
    report = (run_dir / "report.md").read_text()
    assert "](plots/training_curves.png)" in report and "student, distilled" in report

    # the demo cached its teacher: `distill run` on the same recipe reuses it
    recipe = distill.recipes.dump_recipe(
        distill.recipes.load_recipe(run_dir / "recipe.yaml", ["name=again"])
    )
    (tmp_path / "again.yaml").write_text(recipe)
    rerun = invoke("run", tmp_path / "again.yaml", "--out", tmp_path / "again")
    assert "distilled" in rerun.output and "report.html" in rerun.output
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["models"]["teacher"][
        "accuracy"
    ] == pytest.approx(summary["models"]["teacher"]["accuracy"])

    evaluated = json.loads(invoke("eval", run_dir, "--json").output)
    assert evaluated["accuracy"] == pytest.approx(summary["models"]["student"]["accuracy"])
    assert "test accuracy" in invoke("eval", run_dir).output

    taught = json.loads(invoke("teacher", tmp_path / "again.yaml", "--json").output)
    assert taught["model"] == "zoo:cnn" and str(isolated_cache) in taught["cache"]


@pytest.mark.e2e
def test_demo_falls_back_to_mnist1d(isolated_cache, tmp_path, monkeypatch):
    monkeypatch.setattr("distill.cli.fashion_mnist_available", lambda path=None: False)
    result = runner.invoke(
        cli.app,
        ["demo", "--out", str(tmp_path / "m1d"), "--quiet", "--set", "train.max_steps=3",
         "--set", "teacher.train.max_steps=3", "--set", "output.latency_repeats=2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "m1d" / "summary.json").read_text())
    assert summary["dataset"] == "mnist1d"


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {dataset: mnist}\n")
    result = runner.invoke(cli.app, ["run", str(bad)])
    assert result.exit_code == 2
    assert "data.dataset" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli.app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(cli.app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a distill run directory" in result.output


def test_known_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, tmp_path):
    """An error distill explains (its own types) prints one line and exits 2; anything
    else is a bug and keeps its traceback."""
    from distill.errors import DataError

    recipe = str(cli_recipe())

    def explained(*args, **kwargs):
        raise DataError("data.path /nowhere holds no images; point it at a folder")

    monkeypatch.setattr(cli.shared, "run_recipe", explained)
    result = runner.invoke(cli.app, ["run", recipe, "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error: data.path /nowhere" in result.output
    assert "Traceback" not in result.output

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli.shared, "run_recipe", bug)
    result = runner.invoke(cli.app, ["run", recipe, "--out", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, TypeError)


def cli_recipe():
    from pathlib import Path

    return Path(__file__).parents[1] / "recipes" / "mnist1d_kd.yaml"


def test_version_and_losses_speak_json_and_quiet_silences_library_progress_bars(monkeypatch):
    import tqdm.auto

    assert json.loads(invoke("version", "--json").output) == {"version": distill.__version__}
    listed = json.loads(invoke("losses", "--json").output)
    assert listed["kl"]["reads"] == ["student_logits", "teacher_logits", "mask"]
    assert listed["lm_head_sparse_kd"]["in_recipes"] is False
    for name in cli.shared.QUIET_LIBRARIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", tqdm.std.tqdm.__init__)
    monkeypatch.setattr(tqdm.std.tqdm, "distill_quiet", False, raising=False)
    cli.shared.logger(quiet=True, as_json=False)
    assert tqdm.auto.tqdm(range(3)).disable  # transformers' and gguf's bars start off
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"


def test_user_text_prints_as_written_no_emoji_no_markup(capsys):
    """Rich would turn ``:llama:`` into an emoji and ``[bold]`` into a style; model names,
    paths and messages are the user's text and print as given."""
    from distill.cli.shared import fail, logger, out_console, print_summary_table

    logger(quiet=False, as_json=False)(
        "label-only student hf-config:llama [bold]x[/bold]: 15 steps"
    )
    with pytest.raises(typer.Exit):
        fail("model hf-config:llama: args [bad] refused")
    err = capsys.readouterr().err
    assert "hf-config:llama [bold]x[/bold]: 15 steps" in err
    assert "model hf-config:llama: args [bad] refused" in err and "🦙" not in err
    summary = {"name": "n", "models": {"student": {"accuracy": 0.5, "parameters": 10}}}
    with out_console.capture() as captured:
        print_summary_table({**summary, "name": "tiny:llama:"})
    assert "tiny:llama:" in captured.get() and "🦙" not in captured.get()


def test_tables_fold_instead_of_cutting_at_80_columns():
    """In a pipe or a CI log rich renders 80 columns: a long row name or header folds, and
    every value is printed whole (no "…")."""
    from rich.console import Console

    from distill.cli.shared import print_table

    header = ["model", "test acc.", "parameters", "size", "CPU ms/ex.", "KL to T", "train"]
    values = ["80.82%", "1,234,567", "4,823 KiB", "0.0213 ms", "0.5751", "1,234 s"]
    console = Console(width=80, emoji=False)
    for first in ("teacher", "distilled on synthetic inputs (DeepInversion)"):
        with console.capture() as captured:
            print_table("distill: a run", header, [[first, *values]] * 2, console=console)
        text = captured.get()
        assert "…" not in text, text
        for value in values:
            assert text.count(value) == 2, (value, text)
        # at 80 columns when it can fold that narrow; a little wider when it cannot
        width = max(len(line.rstrip()) for line in text.splitlines())
        assert width <= (80 if first == "teacher" else 90), text
    assert console.width == 80


def test_help_paragraphs_wrap_to_the_terminal_not_to_the_source_lines():
    result = runner.invoke(cli.app, ["search", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Each trial builds"))
    paragraph = lines[start : lines.index("", start)]
    assert len(paragraph) >= 3
    assert all(len(line) >= 60 for line in paragraph[:-1]), paragraph  # filled, not broken
    joined = " ".join(paragraph)
    assert "measures it (parameters, CPU latency, memory) against search.budget" in joined


@pytest.mark.e2e
def test_quiet_commands_leave_stderr_empty(
    classifier_run, text_file, tokenizer_dir, tmp_path, monkeypatch
):
    """--quiet silences the libraries too: torch's exporter notes, ONNX Runtime's root-logger
    hint and deprecation warnings (export), transformers' "Loading weights" bar and torchao's
    failed kernel loads (a language model's eval). In fresh processes: what a library prints
    on import is the point."""
    import shutil
    import subprocess
    import sys

    from distill.runs import run_recipe
    from tests.test_language_recipes import tiny_token_kd_recipe

    classifier = tmp_path / "classifier"
    shutil.copytree(classifier_run[0], classifier)
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    lm = tiny_token_kd_recipe(text_file, tokenizer_dir, tmp_path, "baseline=false")
    run_recipe(lm, progress=False, log=lambda m: None)
    commands = [
        ["export", classifier, "-q", "--int8"],
        ["eval", tmp_path / "llm_token_kd", "-q"],
    ]
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "distill", *map(str, command)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", (command, done.stderr)
        assert done.stdout.strip()  # the result itself
