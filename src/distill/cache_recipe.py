"""A recipe's teacher-output cache (``cache:``): where it lives, what it must match, and
building it (``distill cache RECIPE``): top-k per token for a causal language model,
dense logits for a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from distill import teachers
from distill.cache import CacheError, Layout, build_cache, finalize_cache, read_manifest
from distill.distributed import on_main, wait_for_everyone
from distill.recipes import Recipe, RecipeError

OUTPUTS_DIR = "teacher_outputs"


def cache_dir(recipe: Recipe) -> Path:
    assert recipe.cache is not None
    return recipe.cache.dir or recipe.output.dir / recipe.name / OUTPUTS_DIR


def kd_term_name(recipe: Recipe) -> str:
    names = [n for n, t in recipe.objective.items() if t.loss == "lm_head_kd"]
    if not names:
        raise RecipeError("cache: the objective has no lm_head_kd term to read the cache")
    return names[0]


def cache_temperature(recipe: Recipe) -> float:
    temperature = recipe.objective[kd_term_name(recipe)].temperature
    return 1.0 if temperature is None else float(temperature)  # a number (schema-checked)


def cache_vocab_size(recipe: Recipe, teacher: nn.Module) -> int:
    """The vocabulary the cache ranks: ``options.vocab_size`` of the KD term, else the
    teacher head's rows."""
    option = recipe.objective[kd_term_name(recipe)].options.get("vocab_size")
    return (
        int(option) if option is not None else int(teacher.get_output_embeddings().weight.shape[0])
    )


def fingerprint(recipe: Recipe, tokenizer: Any = None) -> dict[str, Any]:
    """What the cached answers depend on besides the inputs themselves (which every read
    checks by digest): a run reading the cache must agree on all of it."""
    assert recipe.teacher is not None
    spec = recipe.data
    found: dict[str, Any] = {
        "teacher": recipe.teacher.model,
        "teacher_args": dict(recipe.teacher.args),
        "teacher_checkpoint": str(recipe.teacher.checkpoint or ""),
    }
    if tokenizer is None:  # a classifier: its teacher was trained for this data and seed
        return {
            **found,
            "teacher_train": recipe.teacher.model_dump(mode="json")["train"],
            "dataset": spec.dataset,  # type: ignore[union-attr]
            "split_seed": spec.split_seed,
            "seed": recipe.seed,
        }
    return {
        **found,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "tokenizer_size": len(tokenizer),
        "seq_len": spec.seq_len,  # type: ignore[union-attr]
        "source": spec.source,  # type: ignore[union-attr]
        "format": spec.format,  # type: ignore[union-attr]
    }


def cached_rows(train: Dataset, val: Dataset) -> Subset:
    """The rows a recipe caches: training then validation (ids stay the rows' own)."""
    assert isinstance(train, Subset) and isinstance(val, Subset)
    return Subset(train.dataset, [*train.indices, *val.indices])


def layout_for(recipe: Recipe, tokenizer: Any, teacher: nn.Module, rows: int) -> Layout:
    """A language model's cache: top-k per token (or dense with ``top_k: null``)."""
    assert recipe.cache is not None
    top_k = recipe.cache.top_k
    return _layout(
        recipe,
        kind="dense" if top_k is None else "topk",
        num_examples=rows,
        k=top_k,
        temperature=cache_temperature(recipe),
        vocab_size=cache_vocab_size(recipe, teacher),
        fingerprint=fingerprint(recipe, tokenizer),
    )


def classifier_layout(recipe: Recipe, rows: int) -> Layout:
    """A classifier's cache: its dense logits, exact, usable at any temperature."""
    return _layout(recipe, kind="dense", num_examples=rows, fingerprint=fingerprint(recipe))


def _layout(recipe: Recipe, **fields: Any) -> Layout:
    assert recipe.cache is not None
    try:
        return Layout(
            shard_size=recipe.cache.shard_size, logprob_dtype=recipe.cache.logprob_dtype, **fields
        )
    except ValueError as error:
        raise RecipeError(f"cache: {error}") from None


def ensure_cache(
    recipe: Recipe,
    teacher: nn.Module,
    rows: Dataset,
    layout: Layout,
    *,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log=print,
    together: bool = False,
) -> dict[str, Any]:
    """Build this worker's missing shards of the teacher's answers on ``rows`` (nothing when
    the cache is complete). With ``together`` the workers are the processes of one launch:
    they wait for each other and the main process writes the manifest."""
    assert recipe.cache is not None
    folder = cache_dir(recipe)
    if (folder / "manifest.json").exists():
        manifest = read_manifest(folder)
        if {k: manifest.get(k) for k in layout.to_json()} == layout.to_json():
            log(f"teacher cache {folder}: complete, reused")
            return {"folder": str(folder), "written_shards": [], "manifest": manifest}
    from distill.pipeline import _teacher_module

    live = _teacher_module(recipe, teacher)  # with the recipe's autocast
    device = next(teacher.parameters()).device
    try:
        result = build_cache(
            live,
            rows,
            folder,
            layout,
            batch_size=recipe.cache.batch_size,
            device=device,
            worker=worker,
            workers=workers,
            progress=progress,
            log=log,
        )
    except CacheError as error:
        raise RecipeError(f"cache.dir {folder}: {error}") from None
    if together:
        wait_for_everyone()
        on_main(lambda: finalize_cache(folder))
    return result


def cache_as_teacher(recipe: Recipe, tokenizer: Any = None) -> teachers.Cached:
    """The recipe's complete cache as a teacher; its fingerprint must match the recipe."""
    try:
        return teachers.Cached(cache_dir(recipe), expect=fingerprint(recipe, tokenizer))
    except CacheError as error:
        raise RecipeError(f"cache: {error}") from None
