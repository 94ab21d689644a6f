"""``distill push RUN_DIR TARGET``: a finished run's distilled student as a Hugging Face
model repository, with a model card.

The folder pushed is ``<run>/student/``: a language model's Hugging Face folder (weights,
config, tokenizer), or, for a classifier, ``model.safetensors`` and ``config.json``
(``distill.models.hub.load_classifier`` builds it back). ``README.md`` is the generated
model card: its metadata (license, tags, datasets, base model), the teacher, the student,
the data, the distillation terms with their weights and temperatures, the test results of
the teacher and the two students, and the resolved recipe.

TARGET is a Hub repository id (``user/name``; ``huggingface_hub`` creates it if needed
and uploads the folder), or a local folder (a path that starts with ``/``, ``./``,
``../``, ``~`` or ``file://``), which gets the same files. A failed upload (no network,
no token, a token refused) is one line, a ``PushError``; the folder stays written, so
nothing is lost. ``dry_run`` writes the folder and card and sends nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.errors import PushError, RecipeError, first_line
from distill.recipes import Recipe
from distill.runs.commands import read_run_recipe
from distill.runs.report.document import markdown_table
from distill.runs.report.tables import header, table_rows
from distill.runs.table import named_with, task_for
from distill.runs.task import Pushable
from distill.runs.workdir import HF_STUDENT_DIR, RECIPE_FILE, SUMMARY_FILE, Log, verify_finished

CARD = "README.md"
LOCAL_PREFIXES = ("/", "./", "../", "~", "file://")
NETWORK_LIBRARIES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}  # their errors


def is_local(target: str) -> bool:
    return target.startswith(LOCAL_PREFIXES)


def hub_folder(run_dir: Path, recipe: Recipe, license: str | None = None, log: Log = print) -> Path:
    """``<run>/student/`` with the student and its model card (``recipe``: the run's),
    written now."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise FileNotFoundError(f"{run_dir}: no {SUMMARY_FILE}; did the run finish?")
    summary = json.loads(summary_path.read_text())
    verify_finished(run_dir)  # nothing damaged is copied, sent or rebuilt
    folder = run_dir / HF_STUDENT_DIR
    task = task_for(recipe)
    if not isinstance(task, Pushable):
        raise RecipeError(
            f"distill push: task {recipe.task} is not built yet (it pushes {named_with(Pushable)} "
            "runs)"
        )
    task.hub_student(run_dir, folder, log)
    card = model_card(task, summary, (run_dir / RECIPE_FILE).read_text(), license)
    (folder / CARD).write_text(card)
    return folder


@dataclass
class Pushed:
    """What ``push`` did: the folder it wrote, where it went (or would go, ``dry_run``)
    and the files sent, relative to the folder, with their sizes in bytes."""

    folder: Path
    target: str
    files: dict[str, int]
    dry_run: bool = False


def push(
    run_dir: Path,
    target: str,
    private: bool = False,
    license: str | None = None,
    log: Log = print,
    dry_run: bool = False,
) -> Pushed:
    """Write the student's folder and send it to ``target`` (``dry_run``: only write it)."""
    recipe = read_run_recipe(run_dir)
    folder = hub_folder(run_dir, recipe, license, log)
    files = {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    if is_local(target):
        where = str(Path(target.removeprefix("file://")).expanduser())
        if not dry_run:
            shutil.copytree(folder, where, dirs_exist_ok=True)
        return Pushed(folder, where, files, dry_run)
    url = f"{hub_endpoint()}/{target}"
    if not dry_run:
        upload(folder, target, private, f"distill: {recipe.name}")
    return Pushed(folder, url, files, dry_run)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def upload(folder: Path, target: str, private: bool, message: str) -> None:
    """Create the Hub repository ``target`` if needed and upload ``folder`` to it; a
    failure the user can fix (network, token, permissions) is a ``PushError``."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(target, private=private, exist_ok=True)
        api.upload_folder(repo_id=target, folder_path=str(folder), commit_message=message)
    except Exception as error:
        reason = push_failure(error)
        if reason is None:  # not the network or the Hub: a bug, with its traceback
            raise
        raise PushError(
            f"distill push to {target}: {reason}; the folder is ready in {folder} (push it "
            "again later, or give a local folder such as ./student-copy)"
        ) from None


def push_failure(error: Exception) -> str | None:
    """Why an upload failed, in words a user can act on; None for an error that is not
    the network's or the Hub's."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        if status == 401 and get_token() is None:
            return "no Hugging Face token; log in with `hf auth login` or set HF_TOKEN"
        if status == 401:
            return (
                "the Hub refused the token (401 Unauthorized); set HF_TOKEN (or `hf auth "
                "login`) to a valid token with write access"
            )
        if status == 403:
            return (
                "the token may not write there (403 Forbidden); use a token with write "
                "access to that user or organization"
            )
        return f"the Hub answered {first_line(error)}"
    module = type(error).__module__.split(".")[0]
    if isinstance(error, OSError) or module in NETWORK_LIBRARIES:
        return (
            f"cannot reach the Hub at {hub_endpoint()} ({type(error).__name__}: "
            f"{str(error).strip() or 'no answer'}); check the network (or HF_ENDPOINT)"
        )
    return None


def model_card(
    task: Pushable, summary: dict[str, Any], recipe_text: str, license: str | None
) -> str:
    """The model card of ``task``'s run: YAML metadata, then what was distilled from what,
    how, and how well."""
    recipe: Recipe = task.recipe  # type: ignore[attr-defined]
    teacher = recipe.teacher
    metadata: dict[str, Any] = {
        "library_name": task.hub_library,
        "license": license or recipe.output.license or "other",
        "tags": ["distill", "knowledge-distillation"],
        "pipeline_tag": task.pipeline_tag,
    }
    dataset = getattr(recipe.data, "dataset", None)
    if dataset and dataset != "text":
        metadata["datasets"] = [dataset]
    if teacher is not None and teacher.model.startswith("hf:"):
        metadata["base_model"] = teacher.model.removeprefix("hf:")
    terms = [
        [name, term.loss, _scheduled(term.weight), _scheduled(term.temperature), term.rows]
        for name, term in recipe.objective.items()
    ]
    student = f"`{recipe.student.model}`" + (
        f" with args `{json.dumps(recipe.student.args)}`" if recipe.student.args else ""
    )
    if recipe.student.peft is not None:
        lora = recipe.student.peft
        student += (
            f"; LoRA adapters (r {lora.r}, alpha {lora.alpha:g}) on "
            f"{', '.join(lora.target_modules)} trained, then merged"
        )
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.name}: a distilled student",
        "",
        recipe.description or "",
        "",
        "Made with distill, by knowledge distillation (Hinton et al., 2015): the student was "
        "trained to reproduce the teacher below.",
        "",
        "## How it was made",
        "",
        f"- **Teacher**: `{teacher.model if teacher else 'none'}`"
        + (f" with args `{json.dumps(teacher.args)}`" if teacher and teacher.args else ""),
        f"- **Student**: {student}",
        f"- **Data**: {summary.get('dataset')}, {summary.get('regime')}",
        f"- **Budget**: {summary.get('steps')} optimizer steps, learning rate "
        f"{recipe.train.lr:g} ({recipe.train.lr_schedule}), seed {recipe.seed}",
        "",
        "The distillation terms (the loss is Σ weight · term):",
        "",
        markdown_table(["term", "loss", "weight", "temperature", "rows"], terms),
        "",
        "## Results on the test split",
        "",
        "The label-only student has the same architecture, initial weights, seed and budget.",
        "",
        markdown_table(header(summary), table_rows(summary)),
        "",
        "## Recipe",
        "",
        f"Rerun with `distill run recipe.yaml` (this is the resolved `{RECIPE_FILE}`):",
        "",
        "```yaml",
        recipe_text.strip(),
        "```",
        "",
        "## Use",
        "",
        "```python",
        *task.hub_usage(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _scheduled(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return ", ".join(f"{k} {v}" for k, v in value.model_dump(exclude_none=True).items())
