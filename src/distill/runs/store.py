"""The teacher store: a teacher trained for a recipe, kept under ``$DISTILL_CACHE/teachers``
by a digest of everything that shapes it, so later runs (and ``distill doctor``) reuse it.

An entry is ``teacher.safetensors`` and ``teacher.json`` (its validation metrics and the
weights' SHA-256), each written atomically, the JSON last: a crash leaves no entry, and the
next run resumes the teacher's training from its checkpoints (``run/``). Reused weights are
verified; a damaged entry is trained again, saying so. A lock per entry makes a second run
that needs the same teacher wait for the first instead of training it alongside.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from torch import nn
from torch.utils.data import DataLoader

from distill.objective import Objective
from distill.paths import (
    atomic_save,
    cache_root,
    json_digest,
    read_json,
    sha256_file,
    write_json,
)
from distill.recipes import Recipe, TrainSpec
from distill.training import Distiller
from distill.training import checkpoint as ckpt
from distill.training.distributed import is_main_process, on_main, wait_for_everyone

WEIGHTS_FILE = "teacher.safetensors"
LOCK_FILE = ".lock"
INFO_FILE = "teacher.json"
# teacher fields that describe ensembles and EMA teachers, not a model to train
ENSEMBLE_AND_EMA_FIELDS = {"members", "combine", "weights", "temperature", "ema_momentum"}

Log = Callable[[str], None]


def settings(train: TrainSpec, **changes: Any) -> dict[str, Any]:
    """A recipe's training section as ``Distiller`` settings (budget aside)."""
    values = train.model_dump(exclude={"epochs", "max_steps"})
    values.update(changes)
    return values


NOT_SHAPING_WEIGHTS = {"train": {"log_with"}}  # teacher fields left out of keys: trackers


def teacher_cache_dir(recipe: Recipe, part: str | None = None) -> Path:
    """Where a teacher trained for this recipe is kept: keyed by everything that shapes it
    (``part``: which of several teachers, e.g. a PATE partition, trained on its own rows).
    ``data.mix`` is not in the key: it mixes the students' batches, never the teacher's."""
    assert recipe.teacher is not None
    key_fields = {
        "teacher": recipe.teacher.model_dump(
            mode="json",
            exclude={
                **dict.fromkeys(("cache", "autocast", *ENSEMBLE_AND_EMA_FIELDS), True),
                **NOT_SHAPING_WEIGHTS,
            },
        ),
        "data": recipe.data.model_dump(
            mode="json",
            exclude={"download", "labeled", "eval_batch_size", "num_workers", "synthetic", "mix"},
        ),
        "seed": recipe.seed,
    }
    if part is not None:
        key_fields["part"] = part
    unset_if_none = (
        ("teacher", "domain"),
        ("teacher", "tokenizer"),
        ("data", "domains"),
        ("data", "captions"),
    )
    for section, field in unset_if_none:
        if key_fields[section].get(field) is None:  # unset: the keys of earlier versions
            key_fields[section].pop(field, None)
    train = key_fields["teacher"].get("train")
    if train is not None and train.get("on_nonfinite") == "stop":  # the default: old keys
        train.pop("on_nonfinite")
    digest = json_digest(key_fields)
    return cache_root() / "teachers" / f"{recipe.teacher.model.replace(':', '_')}-{digest}"


@contextlib.contextmanager
def store_lock(folder: Path, log: Log) -> Iterator[None]:
    """Hold the entry's lock (the main process takes it; the others wait with it): a run
    that finds the entry locked says so and waits for the other run to finish it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_FILE))
    if is_main_process():
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"another run is training this teacher ({folder}): waiting for it")
            lock.acquire()
    wait_for_everyone()
    try:
        yield
    finally:
        wait_for_everyone()
        if lock.is_locked:
            lock.release()


def stored_teacher(
    recipe: Recipe, build: Callable[[], nn.Module], log: Log, part: str | None = None
) -> tuple[nn.Module, dict[str, Any]] | None:
    """The teacher trained earlier for this recipe (``build()`` with the stored weights,
    verified) and its info; None when there is none, ``teacher.cache`` is off, or the
    entry is damaged (then it says so, and the caller trains it again)."""
    assert recipe.teacher is not None
    folder = teacher_cache_dir(recipe, part)
    weights, info_file = folder / WEIGHTS_FILE, folder / INFO_FILE
    if not (recipe.teacher.cache and weights.exists() and info_file.exists()):
        return None
    try:
        info = read_json(info_file)
    except ValueError as error:
        log(f"teacher {recipe.teacher.model}: damaged store entry ({error}); training it again")
        return None
    expected = info.get("sha256")
    if expected is not None and sha256_file(weights) != expected:
        log(
            f"teacher {recipe.teacher.model}: {weights} differs from the checksum recorded "
            "when it was stored (the file is corrupt or was changed); training it again"
        )
        return None
    model = build()
    ckpt.load_weights(model, weights)
    log(f"teacher {recipe.teacher.model}: reused from the cache {folder}")
    return model.eval(), {**info, "cached": True}


def teacher_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a trained teacher's answers (in a teacher-output cache) depend on: it was
    trained for this data and seed."""
    assert recipe.teacher is not None
    teacher_train = recipe.teacher.model_dump(mode="json", exclude=NOT_SHAPING_WEIGHTS)["train"]
    return {
        "teacher": recipe.teacher.model,
        "teacher_args": dict(recipe.teacher.args),
        "teacher_checkpoint": str(recipe.teacher.checkpoint or ""),
        "teacher_train": teacher_train,
        "dataset": recipe.data.dataset,
        "split_seed": recipe.data.split_seed,
        "seed": recipe.seed,
    }


Trained = tuple[nn.Module, dict[str, Any]]  # a teacher and its info


def reuse_or_train(
    recipe: Recipe,
    build: Callable[[], nn.Module],
    train: Callable[[], Trained],
    log: Log,
    part: str | None = None,
    say_reused: bool = True,
) -> Trained:
    """The teacher store's one flow: hold the entry's lock (another run may be training
    the same teacher), reuse the teacher stored there, or else ``train()`` it (which stores
    it, ``fit_and_store_teacher``). ``say_reused``: log a reuse (not for each of many)."""
    with store_lock(teacher_cache_dir(recipe, part), log):
        stored = stored_teacher(recipe, build, log if say_reused else lambda line: None, part)
        return stored if stored is not None else train()


def train_again(recipe: Recipe, train: Callable[[], Trained], log: Log) -> dict[str, Any]:
    """``distill teacher``: ``train()`` the recipe's teacher under its entry's lock, whether
    or not one is stored; its info."""
    with store_lock(teacher_cache_dir(recipe), log):
        return train()[1]


def fit_and_store_teacher(
    recipe: Recipe,
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    progress: bool,
    log: Log,
    val_extras: Callable[[dict[str, float]], dict[str, float]] = lambda metrics: {},
    *,
    objective: Objective | None = None,
    finish: Callable[[], dict[str, Any]] = dict,
    batch_transform: Callable[[Any, int], Any] | None = None,
    part: str | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """Train ``model`` with ``teacher.train`` on ``objective`` (default: cross-entropy),
    continuing an interrupted training from its checkpoints when ``teacher.cache`` is on;
    then ``finish()`` (which may set buffers the weights keep; what it returns joins the
    info) and store it with its validation metrics (plus ``val_extras`` of them); returns
    that info. ``batch_transform`` and ``changes`` (settings) go to the ``Distiller``."""
    spec = recipe.teacher
    assert spec is not None and spec.train is not None
    folder = teacher_cache_dir(recipe, part)
    started = time.perf_counter()
    per_epoch = len(train_loader)
    run = Distiller(
        model,
        objective=objective,
        batch_transform=batch_transform,
        **settings(
            spec.train,
            seed=recipe.seed,
            run_dir=folder / "run",
            progress=progress,
            checkpoint_every=spec.train.checkpoint_every or spec.train.eval_every or per_epoch,
            **changes,
        ),
        log=log,
    )
    run.fit(
        train_loader,
        val_loader,
        epochs=spec.train.epochs,
        max_steps=spec.train.max_steps,
        resume=spec.cache,
    )
    val = run.evaluate(val_loader)
    info = {
        "model": spec.model,
        "train_seconds": time.perf_counter() - started,
        "val": {**val, **val_extras(val)},
        **finish(),
    }

    def write() -> None:
        weights = folder / WEIGHTS_FILE
        atomic_save(weights, lambda path: ckpt.save_weights(model, path))
        write_json(folder / INFO_FILE, {**info, "sha256": sha256_file(weights)}, indent=2)

    on_main(write)
    return info
