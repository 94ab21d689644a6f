"""A recipe's teacher-output cache (``cache:``): where it lives, its layout, building the
missing shards (``distill cache RECIPE``, or ``distill run`` before training) and reading it
back as a teacher. What the rows are and what the answers depend on is the task's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from distill import teachers
from distill.cache import (
    Layout,
    build_cache,
    damaged_shards,
    discard_shards,
    finalize_cache,
    read_manifest,
)
from distill.errors import CacheError, RecipeError
from distill.losses.registry import loss_info
from distill.methods.token_kd import final_hidden_tap
from distill.recipes import Recipe
from distill.runs.fitting import teacher_module
from distill.runs.task import Cacheable, Task
from distill.runs.workdir import Log
from distill.training.distributed import on_main, wait_for_everyone

OUTPUTS_DIR = "teacher_outputs"


def cache_dir(recipe: Recipe) -> Path:
    assert recipe.cache is not None
    return recipe.cache.dir or recipe.output.dir / recipe.name / OUTPUTS_DIR


def kd_term_name(recipe: Recipe) -> str:
    """The objective term that reads a language model's cache: its LM-head loss."""
    names = [n for n, t in recipe.objective.items() if loss_info(t.loss).lm_heads]
    if not names:
        raise RecipeError("cache: the objective has no lm_head_kd term to read the cache")
    return names[0]


def cache_temperature(recipe: Recipe) -> float:
    temperature = recipe.objective[kd_term_name(recipe)].temperature
    return 1.0 if temperature is None else float(temperature)  # a number (schema-checked)


def cache_vocab_size(recipe: Recipe, teacher: nn.Module | teachers.Teacher, tokenizer: Any) -> int:
    """The vocabulary the cache ranks: ``options.vocab_size`` of the KD term, else the
    teacher head's rows (a served teacher: the tokenizer's tokens)."""
    option = recipe.objective[kd_term_name(recipe)].options.get("vocab_size")
    if option is not None:
        return int(option)
    if teachers.is_remote(teacher):
        return len(tokenizer)
    return int(teacher.get_output_embeddings().weight.shape[0])  # type: ignore[operator]


def make_layout(recipe: Recipe, **fields: Any) -> Layout:
    """The recipe's cache layout (``cache.shard_size``, ``cache.logprob_dtype``) with
    ``fields``; a field the format refuses names the ``cache`` section."""
    spec = recipe.cache
    assert spec is not None
    if fields.get("kind") == "topk" and spec.encoding == "compact":
        fields.update(
            encoding="compact", curve_degree=spec.curve_degree, residual_bits=spec.residual_bits
        )
    try:
        return Layout(shard_size=spec.shard_size, logprob_dtype=spec.logprob_dtype, **fields)
    except ValueError as error:
        raise RecipeError(f"cache: {error}") from None


def member_dir(recipe: Recipe, name: str) -> Path:
    """Where a routed teacher's member ``name`` keeps its answers."""
    return cache_dir(recipe) / f"member-{name}"


def ensure_cache(
    recipe: Recipe,
    teacher: teachers.Teacher,
    rows: Dataset,
    layout: Layout,
    *,
    folder: Path | None = None,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log=print,
    together: bool = False,
    head: nn.Module | None = None,
) -> dict[str, Any]:
    """Build this worker's missing shards of ``teacher``'s answers on ``rows`` (nothing
    when the cache is complete; every finished shard is verified first, and a damaged one
    is built again). With ``together`` the workers are the processes of one
    launch: they wait for each other and the main process writes the manifest. A
    hidden-state cache keeps the teacher's LM ``head`` once. ``folder``: the recipe's
    cache folder unless given (a routed member's)."""
    assert recipe.cache is not None
    folder = folder or cache_dir(recipe)
    damaged = damaged_shards(folder)
    if damaged:
        log(f"teacher cache {folder}: shard(s) {damaged} differ from their checksums; rebuilding")
        on_main(lambda: discard_shards(folder, damaged))
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder)
        if {k: manifest.get(k) for k in layout.to_json()} == layout.to_json():
            log(f"teacher cache {folder}: complete, reused")
            return {"folder": str(folder), "written_shards": [], "manifest": manifest}
    try:
        result = build_cache(
            teacher,
            rows,
            folder,
            layout,
            batch_size=recipe.cache.batch_size,
            device=teacher.device if isinstance(teacher, teachers.Module) else "cpu",
            worker=worker,
            workers=workers,
            progress=progress,
            log=log,
            head=head,
        )
    except CacheError as error:
        raise RecipeError(f"cache.dir {folder}: {error}") from None
    if together:
        wait_for_everyone()
        on_main(lambda: finalize_cache(folder))
    return result


def open_cache(folder: Path, fingerprint: dict[str, Any]) -> teachers.Cached:
    """A complete cache as a teacher; its fingerprint must match the run's."""
    try:
        return teachers.Cached(folder, expect=fingerprint)
    except CacheError as error:
        raise RecipeError(f"cache: {error}") from None


def cache_as_teacher(task: Task, teacher: nn.Module) -> teachers.Cached | teachers.Ensemble:
    """The task's complete cache as a teacher: one cache, or, for a routed teacher, each
    member's cache answering the rows routed to it."""
    assert isinstance(task, Cacheable)
    recipe = task.recipe
    members = task.cache_members(teacher)
    if not members:
        return open_cache(cache_dir(recipe), task.cache_fingerprint())
    caches = {m.name: open_cache(member_dir(recipe, m.name), m.layout.fingerprint) for m in members}
    return teachers.Ensemble(caches, combine="route")


def build_teacher_cache(
    task: Task,
    teacher: nn.Module,
    *,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log: Log = print,
    together: bool = False,
) -> dict[str, Any]:
    """The teacher's answers on the task's cache rows (this worker's shards of them); a
    routed teacher's members each on their own rows, in their own folders."""
    assert isinstance(task, Cacheable)
    recipe = task.recipe
    members = task.cache_members(teacher)
    if members:
        built = {}
        for member in members:
            live = (
                member.model
                if teachers.is_remote(member.model)
                else teacher_module(recipe, member.model.eval().requires_grad_(False))  # type: ignore[union-attr]
            )
            log(f"teacher member {member.name}: {len(member.rows):,} rows")  # type: ignore[arg-type]
            built[member.name] = ensure_cache(
                recipe,
                live,
                member.rows,
                member.layout,
                folder=member_dir(recipe, member.name),
                worker=worker,
                workers=workers,
                progress=progress,
                log=log,
                together=together,
            )
        return {"folder": str(cache_dir(recipe)), "members": built}
    rows = task.cache_rows()
    layout = task.cache_layout(teacher, len(rows))  # type: ignore[arg-type]
    head = None
    if isinstance(teacher, teachers.Served):
        live: teachers.Teacher = teacher
    else:
        cached = task.cache_model(teacher).eval().requires_grad_(False)
        live = teacher_module(recipe, cached)  # under the recipe's autocast
        if layout.kind == "hidden":  # its final hidden states, and its LM head once
            live.add_taps([final_hidden_tap(cached)])
            head = cached.get_output_embeddings()
    return ensure_cache(
        recipe,
        live,
        rows,
        layout,
        worker=worker,
        workers=workers,
        progress=progress,
        log=log,
        together=together,
        head=head,
    )


class DenseAnswers(Cacheable):
    """A cache of the teacher's dense outputs (a classifier's logits, an image tower's
    embeddings) on every row: the distilled student's, validation and test."""

    def cache_rows(self) -> Dataset:
        data = self.data  # type: ignore[attr-defined]
        return ConcatDataset([data.student_train, data.val, data.test])

    def cache_layout(self, teacher: nn.Module, rows: int) -> Layout:
        fingerprint = self.cache_fingerprint()
        recipe = self.recipe  # type: ignore[attr-defined]
        return make_layout(recipe, kind="dense", num_examples=rows, fingerprint=fingerprint)
