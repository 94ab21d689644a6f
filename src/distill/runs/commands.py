"""The commands besides ``distill run``, for any kind of run: ``distill teacher``,
``cache``, ``generate``, and on a finished run ``eval``, ``export`` and ``sample``. What
only some kinds of run can do is asked as a capability, so the command line never asks
which task a recipe is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import RecipeError
from distill.recipes import Recipe, validate_recipe
from distill.recipes.load import read_yaml
from distill.runs.stages.cache import build_teacher_cache
from distill.runs.stages.export import export_run
from distill.runs.store import teacher_cache_dir
from distill.runs.table import named_with, task_for
from distill.runs.task import Cacheable, Drafts, Exportable, Generates, Samples
from distill.runs.workdir import RECIPE_FILE, Log, check_run_dir


def quiet(line: str) -> None:
    """A log that keeps nothing (a command on a finished run has no notes to give)."""


def cache_command(
    recipe: Recipe, *, worker: int = 0, workers: int = 1, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """``distill cache``: run the teacher (trained or reused) once over the rows students
    read and store its answers (this worker's shards of them)."""
    task = task_for(recipe)
    if not isinstance(task, Cacheable):
        raise RecipeError(f"cache: task {recipe.task} has no teacher cache yet")
    if recipe.cache is None:
        raise RecipeError(f"cache: the recipe has no cache section; add `{task.cache_example}`")
    task.prepare(progress, log)
    teacher, _ = task.teacher(progress, log)
    return build_teacher_cache(
        task, teacher, worker=worker, workers=workers, progress=progress, log=log
    )


def teacher_command(recipe: Recipe, *, progress: bool = True, log: Log = print) -> dict[str, Any]:
    """``distill teacher``: train (or fine-tune) the recipe's teacher and store it; its
    info (validation metrics, seconds) and where it is (``cache``)."""
    if recipe.teacher is None:
        raise RecipeError("teacher: the recipe names no teacher")
    task = task_for(recipe)
    task.prepare(progress, log)
    info = task.train_teacher(progress, log)
    return {**info, "cache": str(teacher_cache_dir(recipe))}


def generate_command(recipe: Recipe, *, progress: bool = True, log: Log = print) -> Path:
    """``distill generate``: the teacher answers the recipe's prompts; returns the dataset."""
    task = task_for(recipe)
    if not isinstance(task, Generates):
        raise RecipeError(
            f"task {recipe.task}: distill generate is for {named_with(Generates)} recipes"
        )
    return task.generate(progress, log)


def speculative_command(
    run_dir: Path, *, row: str = "student", log: Log = print, **options: Any
) -> dict[str, Any]:
    """``distill eval --speculative``: the run's ``row`` (the distilled ``student`` or the
    label-only ``baseline``) as a speculative-decoding draft for its teacher."""
    recipe = read_run_recipe(run_dir)
    task = task_for(recipe)
    if not isinstance(task, Drafts):
        raise RecipeError(
            f"distill eval --speculative: for {named_with(Drafts)} runs with a teacher; "
            f"this run's task is {recipe.task}"
        )
    return task.measure_draft(Path(run_dir), row=row, log=log, **options)


def read_run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a finished (or interrupted) run wrote."""
    check_run_dir(run_dir)
    path = Path(run_dir) / RECIPE_FILE
    return validate_recipe(read_yaml(path), str(path))


def eval_command(run_dir: Path) -> tuple[dict[str, float], str]:
    """``distill eval``: the run's saved student on its recipe's test split; the metrics
    and a line that says them."""
    task = task_for(read_run_recipe(run_dir))
    task.prepare(False, quiet)
    metrics = task.evaluate(task.load_student(Path(run_dir)), None)
    return metrics, task.describe_eval(metrics)


def export_command(run_dir: Path, **options: Any) -> dict[str, Any]:
    """``distill export``: a run's student as ONNX, checked against PyTorch (``options``
    as ``runs.stages.export.export_run``); for the tasks that export."""
    recipe = read_run_recipe(run_dir)
    task = task_for(recipe)
    if not isinstance(task, Exportable):
        raise RecipeError(
            f"task {recipe.task}: distill export takes {named_with(Exportable)} runs (export "
            "of the others is not built yet)"
        )
    return export_run(Path(run_dir), task, **options)


def sample_command(run_dir: Path, **options: Any) -> dict[str, Any]:
    """``distill sample``: images from a generative run's model (``Samples``)."""
    recipe = read_run_recipe(run_dir)
    task = task_for(recipe)
    if not isinstance(task, Samples):
        raise RecipeError(
            f"task {recipe.task}: distill sample draws from {named_with(Samples)} runs"
        )
    return task.sample(Path(run_dir), **options)
