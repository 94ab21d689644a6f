"""distill push: a finished run's student, with its model card, as a Hub repository (a
local folder here, and the Hub's client replaced by a recorder: the Hub is unreachable)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from typer.testing import CliRunner

from distill import cli
from distill.models.hub import load_classifier
from distill.recipes import load_recipe
from distill.runs import run_recipe
from distill.runs.classify import Classification, prepare_data

from .test_lm_pipeline import tiny_token_kd_recipe

ROOT = Path(__file__).parent.parent


def card_parts(text: str) -> tuple[dict, str]:
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def classifier_run(digits_idx_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("push")
    recipe = load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=null", "teacher.train.max_steps=10",
         "train.epochs=null", "train.max_steps=4", f"output.dir={folder}",
         "output.latency_repeats=1"],
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_CACHE", str(folder / "cache"))
        summary = run_recipe(recipe, progress=False, log=lambda m: None)
    return folder / "fashion_mnist_kd", recipe, summary


def test_push_to_a_folder_gives_the_student_and_its_model_card(classifier_run, tmp_path):
    run_dir, recipe, summary = classifier_run
    target = tmp_path / "repo"
    result = CliRunner().invoke(
        cli.app, ["push", str(run_dir), str(target), "--license", "apache-2.0", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in target.iterdir()}
    pushed = load_classifier(target)
    data = prepare_data(recipe)
    original = Classification().load_student(run_dir, recipe, data)
    x = torch.stack([data.test[i][0] for i in range(8)])
    with torch.no_grad():
        torch.testing.assert_close(pushed(x), original.eval()(x))
    metadata, body = card_parts((target / "README.md").read_text())
    assert metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "image-classification"
    assert "knowledge-distillation" in metadata["tags"]
    accuracy = 100 * summary["models"]["student"]["accuracy"]
    assert f"{accuracy:.2f}" in body  # the results table
    assert "| kd | kl | 0.9 | 2 |" in body  # the distillation terms
    assert "name: fashion_mnist_kd" in body  # the recipe


def test_push_to_the_hub_creates_the_repository_and_uploads_the_folder(classifier_run, monkeypatch):
    run_dir, _, _ = classifier_run
    calls = []

    class Recorder:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            calls.append(("upload_folder", repo_id, files, commit_message))

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    result = CliRunner().invoke(cli.app, ["push", str(run_dir), "someone/student", "--private"])
    assert result.exit_code == 0, result.output
    assert calls[0] == ("create_repo", "someone/student", True, True)
    kind, repo, files, message = calls[1]
    assert (kind, repo, message) == (
        "upload_folder",
        "someone/student",
        "distill: fashion_mnist_kd",
    )
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert "https://huggingface.co/someone/student" in result.output


def test_a_language_model_run_pushes_its_hugging_face_folder(
    text_file, tokenizer_dir, tmp_path, monkeypatch
):
    import transformers

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    recipe = tiny_token_kd_recipe(
        text_file, tokenizer_dir, tmp_path, "baseline=false", "output.license=mit"
    )
    run_recipe(recipe, progress=False, log=lambda m: None)
    result = CliRunner().invoke(
        cli.app, ["push", str(tmp_path / "llm_token_kd"), str(tmp_path / "repo"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "repo")
    assert model.config.num_hidden_layers == 2
    metadata, body = card_parts((tmp_path / "repo" / "README.md").read_text())
    assert metadata["license"] == "mit"
    assert metadata["pipeline_tag"] == "text-generation"
    assert "perplexity" in body and "AutoModelForCausalLM" in body


def test_push_of_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(
        (ROOT / "recipes" / "fashion_mnist_kd.yaml").read_text()
    )
    result = CliRunner().invoke(cli.app, ["push", str(tmp_path / "run"), str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "summary.json" in result.output and "did the run finish" in result.output
