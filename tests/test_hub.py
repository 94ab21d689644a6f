"""distill push: a finished run's student, with its model card, as a Hub repository (a
local folder here, and the Hub's client replaced by a recorder: the Hub is unreachable)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants
from typer.testing import CliRunner

from distill import cli
from distill.models.hub import load_classifier
from distill.runs import run_recipe
from distill.runs.tasks.classify.task import Classification

from .test_damaged_runs import damage
from .test_language_recipes import tiny_token_kd_recipe

ROOT = Path(__file__).parent.parent


def card_parts(text: str) -> tuple[dict, str]:
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.mark.e2e
def test_push_to_a_folder_gives_the_student_and_its_model_card(classifier_run, tmp_path):
    run_dir, recipe, summary = classifier_run
    target = tmp_path / "repo"
    result = CliRunner().invoke(
        cli.app, ["push", str(run_dir), str(target), "--license", "apache-2.0", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in target.iterdir()}
    pushed = load_classifier(target)
    task = Classification(recipe)
    data = task.prepare(False, print)
    original = task.load_student(run_dir)
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


@pytest.mark.e2e
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


class Refusing(BaseHTTPRequestHandler):
    """A stand-in Hub that answers every request ``status``: 401, as the real one does to a
    missing or invalid token, or 403, to a token that may not write there."""

    status = 401

    def do_POST(self):
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_hub(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # no token stored there
    yield
    server.shutdown()


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


@pytest.mark.e2e
def test_push_without_a_network_is_one_line_and_keeps_the_folder(classifier_run, monkeypatch):
    run_dir, _, _ = classifier_run
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    result = CliRunner().invoke(cli.app, ["push", str(run_dir), "someone/student"])
    line = one_line_error(result)
    assert "cannot reach the Hub at http://127.0.0.1:9" in line and "check the network" in line
    assert f"the folder is ready in {run_dir / 'student'}" in line
    assert (run_dir / "student" / "README.md").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("token", "status", "said"),
    [
        (None, 401, "no Hugging Face token; log in with `hf auth login` or set HF_TOKEN"),
        ("hf_not_a_real_token", 401, "the Hub refused the token (401 Unauthorized)"),
        ("hf_read_only_token", 403, "the token may not write there (403 Forbidden)"),
    ],
    ids=["no-token", "bad-token", "read-only-token"],
)
def test_push_with_a_missing_or_refused_token_is_one_line(
    classifier_run, refusing_hub, monkeypatch, token, status, said
):
    run_dir, _, _ = classifier_run
    monkeypatch.setattr(Refusing, "status", status)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    line = one_line_error(CliRunner().invoke(cli.app, ["push", str(run_dir), "someone/student"]))
    assert said in line


@pytest.mark.e2e
def test_a_dry_run_writes_the_folder_and_card_and_sends_nothing(classifier_run, monkeypatch):
    run_dir, _, _ = classifier_run

    class Unreachable:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a dry run must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    result = CliRunner().invoke(cli.app, ["push", str(run_dir), "someone/student", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: would push" in result.output and "nothing sent" in result.output
    assert "someone/student" in result.output
    for name in ("README.md", "config.json", "model.safetensors"):
        assert name in result.output and (run_dir / "student" / name).exists()


@pytest.mark.e2e
def test_a_language_model_run_pushes_its_hugging_face_folder(text_file, tokenizer_dir, tmp_path):
    import transformers

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
    # the Hugging Face folder is checksummed with the student: a damaged copy is not pushed
    damage(tmp_path / "llm_token_kd" / "student" / "model.safetensors")
    refused = CliRunner().invoke(
        cli.app, ["push", str(tmp_path / "llm_token_kd"), str(tmp_path / "again"), "--quiet"]
    )
    assert refused.exit_code == 2 and "student/model.safetensors: differs" in refused.output
    assert not (tmp_path / "again").exists()


def test_push_of_an_unfinished_run_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(
        (ROOT / "recipes" / "fashion_mnist_kd.yaml").read_text()
    )
    result = CliRunner().invoke(cli.app, ["push", str(tmp_path / "run"), str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "summary.json" in result.output and "did the run finish" in result.output
