"""The run directory: one run of one recipe, locked while it runs, resumed when rerun.

- ``open_run_dir`` takes an exclusive lock (a second run into the same directory fails at
  once, naming it), refuses a directory that holds a run of another recipe (naming the
  fields that differ), and with ``restart`` deletes everything an earlier run wrote there
  (only in a directory that holds a run's ``recipe.yaml``).
- Each student's folder gets ``finished.json`` when it is trained and measured: its report
  row and the SHA-256 of its weights (and of any other format it was saved in). A rerun
  reuses a finished, intact student and resumes an interrupted one from its checkpoints;
  the commands that read a finished student (eval, export, push, sample, a later run
  starting from it) refuse one whose files differ from their checksums (``verify_finished``).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from torch import nn

from distill.errors import CheckpointError, RecipeError, UsageError
from distill.paths import changed_files, read_json, sha256_file, write_json
from distill.recipes import Recipe, dump_recipe, validate_recipe
from distill.recipes.load import read_yaml
from distill.training import checkpoint as ckpt
from distill.training.distributed import is_main_process, on_main, wait_for_everyone

LOCK_FILE = ".lock"
FINISHED_FILE = "finished.json"
# recipe fields a rerun may change without starting over: they do not change what is trained
HARMLESS = {
    ("description",),
    ("output", "latency_repeats"),
    ("data", "num_workers"),
    ("data", "eval_batch_size"),
}

RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
BASELINE_DIR = "baseline"
HF_STUDENT_DIR = "student"  # a student in Hugging Face's format: what distill push sends

Log = Callable[[str], None]  # where a run's notes go: print, a file, nowhere


def flat(values: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """A nested mapping as {(key, path): value}."""
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[tuple[str, ...], Any] = {}
    for key, value in values.items():
        out.update(flat(value, (*prefix, str(key))))
    return out


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The fields (``a.b: old -> new``) in which two resolved recipes differ, harmless
    ones aside."""
    a, b = flat(old), flat(new)
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k) and k not in HARMLESS)
    return [f"{'.'.join(k)}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


@contextlib.contextmanager
def open_run_dir(recipe: Recipe, run_dir: Path, restart: bool, log: Log) -> Iterator[Path]:
    """The run directory, locked for this run (see the module docstring). A directory this
    call created and that holds nothing more when the run fails is removed again."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file; give --out (or output.dir) a folder")
    created = not run_dir.exists()
    lock = FileLock(str(run_dir / LOCK_FILE))
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise UsageError(
                f"{run_dir} is in use by another distill run (it holds {run_dir / LOCK_FILE}); "
                "wait for it to end, or give another --out"
            ) from None
    wait_for_everyone()
    finished = False
    try:
        on_main(lambda: prepare(recipe, run_dir, restart, log))
        yield run_dir
        finished = True
    finally:
        wait_for_everyone()
        if lock.is_locked:
            lock.release()
        leftover = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        if created and not finished and leftover <= {LOCK_FILE, RECIPE_FILE}:  # nothing done
            on_main(lambda: shutil.rmtree(run_dir, ignore_errors=True))


def prepare(recipe: Recipe, run_dir: Path, restart: bool, log: Log) -> None:
    """Refuse another recipe's run (unless ``restart``), clear it with ``restart``, then
    write this run's recipe."""
    written = run_dir / RECIPE_FILE
    resolved = dump_recipe(recipe)
    if written.exists() and not restart:
        try:
            old = yaml.safe_load(written.read_text())
        except yaml.YAMLError:
            old = {}
        changes = recipe_changes(old or {}, yaml.safe_load(resolved))
        if changes:
            raise RecipeError(
                f"{run_dir} holds a run of another recipe ({'; '.join(changes[:5])}"
                + (f"; {len(changes) - 5} more" if len(changes) > 5 else "")
                + "); rerun with --restart to start over there, or give another --out"
            )
        log(f"{run_dir}: continuing the run there (finished students are reused)")
    if restart and written.exists():
        log(f"{run_dir}: --restart, deleting the earlier run's files")
        for path in run_dir.iterdir():
            if path.name == LOCK_FILE:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    written.write_text(resolved)


def finished_row(folder: Path, weights: list[str], log: Log) -> dict[str, Any] | None:
    """The report row of a student finished in ``folder`` whose files (``weights`` and any
    other its record names) match their checksums; None when it did not finish, or (saying
    so) its files changed."""
    marker = folder / FINISHED_FILE
    if not marker.exists():
        return None
    try:
        record = read_json(marker)
    except ValueError as error:
        log(f"{marker}: {error}; training that student again")
        return None
    damaged = changed_files(folder, {name: None for name in weights} | record.get("sha256", {}))
    if damaged:
        log(
            f"{folder / damaged[0]}: missing or changed since it was finished; training that "
            "student again"
        )
        return None
    return record["row"]


def verify_finished(folder: Path) -> None:
    """Check the student a run finished in ``folder`` before a command reads it: every file
    ``finished.json`` records must match its SHA-256. A ``CheckpointError`` names the first
    file that does not (or says that the student never finished)."""
    folder = Path(folder)
    marker = folder / FINISHED_FILE
    if not marker.exists():
        raise CheckpointError(
            f"{folder}: no {FINISHED_FILE}, so the student there did not finish; rerun "
            "`distill run` on its recipe (with --out pointing here) to finish it"
        )
    try:
        sums = read_json(marker).get("sha256", {})
    except ValueError as error:
        raise CheckpointError(f"{marker}: {error}; rerun `distill run` to train it again") from None
    for name in changed_files(folder, sums):
        path = folder / name
        what = (
            f"differs from the SHA-256 that {marker.name} recorded when the run finished it, "
            "so it is damaged or was changed"
            if path.is_file()
            else f"missing, though {marker.name} records it"
        )
        raise CheckpointError(
            f"{path}: {what}; restore it from a copy, or rerun `distill run` on its recipe "
            "(with --out pointing at the run) to train that student again"
        )


def files_under(run_dir: Path, folder: Path) -> list[str]:
    """The files in ``folder`` (recursively), as paths relative to ``run_dir``; none when
    it does not exist (on a process that did not write it)."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(run_dir)) for p in folder.rglob("*") if p.is_file())


def load_finished(model: nn.Module, folder: Path) -> nn.Module:
    """``model`` with the weights of the student a run finished in ``folder``, verified."""
    verify_finished(folder)
    ckpt.load_weights(model, Path(folder) / ckpt.STUDENT_FILE)
    return model


def mark_finished(folder: Path, row: dict[str, Any], weights: list[str]) -> None:
    """Record that the student in ``folder`` is trained and measured (written last), with
    the SHA-256 of its ``weights`` files (paths relative to ``folder``)."""
    sums = {name: sha256_file(folder / name) for name in weights}
    write_json(folder / FINISHED_FILE, {"row": row, "sha256": sums}, indent=2)


def check_run_dir(run_dir: Path) -> None:
    """Refuse a folder that ``distill run`` did not write."""
    if not (Path(run_dir) / RECIPE_FILE).exists():
        raise FileNotFoundError(f"{run_dir} is not a distill run directory (no {RECIPE_FILE})")


def earlier_run(run_dir: Path, model: str) -> Recipe:
    """The recipe of the finished run ``run_dir`` that a recipe's ``model`` names (its
    student is what the model loads); a folder without that recipe or student is refused."""
    if not (run_dir / RECIPE_FILE).exists() or not (run_dir / ckpt.STUDENT_FILE).exists():
        raise RecipeError(
            f"model {model}: a directory must be a distill run with {RECIPE_FILE} and "
            f"{ckpt.STUDENT_FILE}"
        )
    return validate_recipe(read_yaml(run_dir / RECIPE_FILE), str(run_dir / RECIPE_FILE))
