"""Run a recipe: data, teacher (loaded, cached or trained), a label-only student and a
distilled student with the same seed and budget, then measure all three."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from distill import checkpoint as ckpt
from distill import teachers
from distill.batch import Batch
from distill.cache_recipe import cache_as_teacher
from distill.data import (
    Augmented,
    WithDomain,
    WithExampleId,
    WithoutLabels,
    class_to_domain,
    domain_subset,
    labeled_split,
    load_dataset,
    train_val_split,
)
from distill.distributed import num_processes, on_main, process_index
from distill.engine import Callback, Distiller
from distill.losses import cross_entropy
from distill.measure import cpu_latency_ms, parameter_count, size_on_disk
from distill.models import build_model
from distill.mutual import Cohort
from distill.objective import Objective, Term
from distill.paths import cache_root
from distill.recipes import (
    ModelSpec,
    Recipe,
    RecipeError,
    TrainSpec,
    build_objective,
    dump_recipe,
    validate_recipe,
)
from distill.recipes.load import read_yaml

RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
BASELINE_DIR = "baseline"
# teacher fields that describe ensembles and EMA teachers, not a model to train
ENSEMBLE_AND_EMA_FIELDS = {"members", "combine", "weights", "temperature", "ema_momentum"}

Log = Callable[[str], None]


@dataclass
class Data:
    """Every split a recipe run needs."""

    teacher_train: Dataset
    val: Dataset
    student_train: Dataset  # with hidden labels outside the labelled subset, if any
    baseline_train: Dataset  # the labelled examples only
    test: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    regime: str


def prepare_data(recipe: Recipe) -> Data:
    spec = recipe.data
    train, test, num_classes = load_dataset(
        spec.dataset, spec.path, allow_download=spec.download, image_size=spec.image_size
    )
    if spec.domains:
        try:
            domain_of_class = class_to_domain(spec.domains, num_classes)
        except ValueError as error:
            raise RecipeError(str(error)) from error
        train, test = WithDomain(train, domain_of_class), WithDomain(test, domain_of_class)
    if recipe.cache is not None:  # ids for the teacher-output cache, unique over both sets
        train, test = WithExampleId(train), WithExampleId(test, offset=len(train))
    teacher_train, teacher_val = train_val_split(train, spec.val_fraction, spec.split_seed)
    if spec.labeled is None:
        student_train = baseline_train = teacher_train
        val = teacher_val
        regime = f"all {len(teacher_train):,} training labels"
    else:
        baseline_train, val, student_train = labeled_split(
            train, spec.labeled, spec.val_fraction, spec.split_seed
        )
        if spec.transfer_classes is not None:
            student_train = _only_classes(student_train, train, spec.transfer_classes)
        regime = (
            f"{spec.labeled:,} labels ({len(baseline_train):,} train + {len(val):,} validation); "
            f"the distilled student also learns from the teacher on {len(student_train):,} "
            "training inputs (a transfer set)"
        )
    if spec.augment:
        teacher_train, student_train, baseline_train = (
            Augmented(teacher_train),
            Augmented(student_train),
            Augmented(baseline_train),
        )
    in_shape = tuple(train[0][0].shape)
    return Data(
        teacher_train, val, student_train, baseline_train, test, num_classes, in_shape, regime
    )


def _only_classes(transfer: Dataset, labelled_source: Dataset, classes: list[int]) -> Subset:
    """The transfer set's labelled rows plus its unlabelled rows of ``classes`` (read from
    the source's true labels, which the transfer set hides)."""
    assert isinstance(transfer, WithoutLabels) and isinstance(transfer.dataset, Subset)
    source_index = transfer.dataset.indices
    wanted = set(classes)
    keep = [
        i
        for i in range(len(transfer))
        if i in transfer.keep or int(labelled_source[source_index[i]][1]) in wanted
    ]
    return Subset(transfer, keep)


def loader(dataset: Dataset, recipe: Recipe, train: bool) -> DataLoader:
    spec = recipe.data
    return DataLoader(
        dataset,
        batch_size=spec.batch_size if train else spec.eval_batch_size,
        shuffle=train,
        num_workers=spec.num_workers,
    )


def model_from_spec(spec: ModelSpec, data: Data) -> nn.Module:
    """Build a model; load ``checkpoint`` weights, or a run directory's student."""
    run_dir = Path(spec.model)
    if run_dir.is_dir():
        if not (run_dir / RECIPE_FILE).exists() or not (run_dir / ckpt.STUDENT_FILE).exists():
            raise RecipeError(
                f"model {spec.model}: a directory must be a distill run with {RECIPE_FILE} and "
                f"{ckpt.STUDENT_FILE}"
            )
        earlier = validate_recipe(read_yaml(run_dir / RECIPE_FILE), str(run_dir / RECIPE_FILE))
        model = model_from_spec(earlier.student.model_copy(update={"checkpoint": None}), data)
        ckpt.load_weights(model, run_dir / ckpt.STUDENT_FILE)
    else:
        model = build_model(spec.model, data.num_classes, data.in_shape, spec.args, spec.pretrained)
    if spec.checkpoint is not None:
        if not spec.checkpoint.exists():
            raise RecipeError(f"checkpoint {spec.checkpoint} does not exist")
        ckpt.load_weights(model, spec.checkpoint)
    return model


def steps_per_epoch(dataset: Dataset, recipe: Recipe) -> int:
    """Optimizer steps in one pass over ``dataset``: each process reads its own shard."""
    return epoch_steps(len(dataset), recipe.data.batch_size, recipe.train.grad_accum_steps)  # type: ignore[arg-type]


def epoch_steps(examples: int, batch_size: int, grad_accum_steps: int) -> int:
    """Optimizer steps per epoch when every process reads ``examples / processes`` of them
    in batches of ``batch_size`` (as the engine's sampler shards them)."""
    per_process = math.ceil(examples / num_processes())
    return math.ceil(math.ceil(per_process / batch_size) / grad_accum_steps)


def _settings(train: TrainSpec, **changes: Any) -> dict[str, Any]:
    settings = train.model_dump(exclude={"epochs", "max_steps"})
    settings.update(changes)
    return settings


# -- teacher ---------------------------------------------------------------------------------


def teacher_cache_dir(recipe: Recipe) -> Path:
    """Where a teacher trained for this recipe is kept: keyed by everything that shapes it."""
    assert recipe.teacher is not None
    key_fields = {
        "teacher": recipe.teacher.model_dump(
            mode="json", exclude={"cache", "autocast", *ENSEMBLE_AND_EMA_FIELDS}
        ),
        "data": recipe.data.model_dump(
            mode="json", exclude={"download", "labeled", "eval_batch_size", "num_workers"}
        ),
        "seed": recipe.seed,
    }
    for section, field in (("teacher", "domain"), ("data", "domains")):
        if key_fields[section].get(field) is None:  # unset: the keys of earlier versions
            key_fields[section].pop(field, None)
    digest = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "teachers" / f"{recipe.teacher.model.replace(':', '_')}-{digest}"


def train_teacher(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    """Train the recipe's teacher on labels (its ``teacher.train`` settings) and cache it."""
    spec = recipe.teacher
    if spec is not None and spec.model in ("ensemble", "ema"):
        raise RecipeError(
            f"teacher.model {spec.model}: nothing to train beforehand ("
            + (
                "distill run trains and caches each member"
                if spec.model == "ensemble"
                else "the EMA teacher follows the student during its training"
            )
            + ")"
        )
    if spec is None or spec.train is None:
        raise RecipeError("teacher.train is not set: the recipe says nothing about how to train it")
    torch.manual_seed(recipe.seed)
    model = model_from_spec(spec, data)
    train_set, val_set, where = data.teacher_train, data.val, ""
    if spec.domain is not None:
        assert recipe.data.domains is not None  # the recipe checks it
        index = list(recipe.data.domains).index(spec.domain)
        train_set, val_set = domain_subset(train_set, index), domain_subset(val_set, index)
        where = f" of domain {spec.domain}"
    log(f"training the teacher {spec.model} on {len(train_set):,} labelled examples{where}")
    info = fit_and_cache_teacher(
        recipe, model, loader(train_set, recipe, True), loader(val_set, recipe, False), progress
    )
    return model.eval(), info


def fit_and_cache_teacher(
    recipe: Recipe,
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    progress: bool,
    val_extras: Callable[[dict[str, float]], dict[str, float]] = lambda metrics: {},
) -> dict[str, Any]:
    """Train ``model`` with ``teacher.train``, then write it and its validation metrics
    (plus ``val_extras`` of them) to the teacher cache; returns that info."""
    spec = recipe.teacher
    assert spec is not None and spec.train is not None
    folder = teacher_cache_dir(recipe)
    started = time.perf_counter()
    run = Distiller(
        model, **_settings(spec.train, seed=recipe.seed, run_dir=folder / "run", progress=progress)
    )
    run.fit(train_loader, val_loader, epochs=spec.train.epochs, max_steps=spec.train.max_steps)
    val = run.evaluate(val_loader)
    info = {
        "model": spec.model,
        "train_seconds": time.perf_counter() - started,
        "val": {**val, **val_extras(val)},
    }

    def write() -> None:
        ckpt.save_weights(model, folder / "teacher.safetensors")
        (folder / "teacher.json").write_text(json.dumps(info, indent=2))

    on_main(write)
    return info


def cached_teacher(
    recipe: Recipe, build: Callable[[], nn.Module], log: Log
) -> tuple[nn.Module, dict[str, Any]] | None:
    """The teacher trained earlier for this recipe (``build()`` with the cached weights)
    and its info, or None when there is none (or ``teacher.cache`` is off)."""
    assert recipe.teacher is not None
    folder = teacher_cache_dir(recipe)
    weights = folder / "teacher.safetensors"
    if not (recipe.teacher.cache and weights.exists()):
        return None
    model = build()
    ckpt.load_weights(model, weights)
    log(f"teacher {recipe.teacher.model}: reused from the cache {folder}")
    info = json.loads((folder / "teacher.json").read_text())
    return model.eval(), {**info, "cached": True}


def get_teacher(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    spec = recipe.teacher
    assert spec is not None
    if spec.model == "ensemble":
        assert spec.members is not None
        members, infos = [], []
        order = spec.members
        if spec.combine == "route":  # member k answers domain k
            assert recipe.data.domains is not None
            names = list(recipe.data.domains)
            order = sorted(spec.members, key=lambda member: names.index(member.domain))
        for i, member in enumerate(order):
            log(
                f"ensemble member {i}: {member.model}"
                + (f" (domain {member.domain})" if member.domain else "")
            )
            model, info = get_teacher(
                recipe.model_copy(update={"teacher": member}), data, progress, log
            )
            members.append(model)
            infos.append(info)
        ensemble = teachers.EnsembleModel(
            members, spec.combine, weights=spec.weights, temperature=spec.temperature
        )
        seconds = sum(info.get("train_seconds", 0.0) for info in infos)
        return ensemble.eval(), {"model": "ensemble", "train_seconds": seconds, "members": infos}
    has_weights = spec.checkpoint is not None or Path(spec.model).is_dir()
    if spec.train is None and not (has_weights or spec.pretrained):
        raise RecipeError(
            "teacher: give checkpoint (weights), a run directory as model, pretrained: true, "
            "or train (settings to train it, or to fine-tune pretrained weights)"
        )
    if has_weights or spec.train is None:
        log(f"teacher {spec.model}: loaded, not trained")
        return model_from_spec(spec, data).eval(), {"model": spec.model, "train_seconds": 0.0}
    cached = cached_teacher(recipe, lambda: model_from_spec(spec, data), log)
    if cached is not None:
        return cached
    return train_teacher(recipe, data, progress, log)


# -- students --------------------------------------------------------------------------------


def build_classifier_cache(
    recipe: Recipe,
    data: Data,
    teacher: nn.Module,
    *,
    worker: int = 0,
    workers: int = 1,
    progress: bool = True,
    log: Log = print,
    together: bool = False,
) -> dict[str, Any]:
    """The teacher's dense logits on the transfer, validation and test rows (this worker's
    shards of them), kept by example id in the recipe's cache folder."""
    from distill.cache_recipe import classifier_layout, ensure_cache

    rows = ConcatDataset([data.student_train, data.val, data.test])
    return ensure_cache(
        recipe, teacher.eval(), rows, classifier_layout(recipe, len(rows)), worker=worker,
        workers=workers, progress=progress, log=log, together=together,
    )  # fmt: skip


def cache_command(
    recipe: Recipe, *, worker: int = 0, workers: int = 1, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """``distill cache`` for a classification recipe: the teacher (trained or reused) runs
    once over the data, and its logits are stored."""
    if recipe.cache is None:
        raise RecipeError("cache: the recipe has no cache section; add `cache: {}`")
    data = prepare_data(recipe)
    teacher, _ = get_teacher(recipe, data, progress, log)
    return build_classifier_cache(
        recipe, data, teacher, worker=worker, workers=workers, progress=progress, log=log
    )


def _teacher_module(recipe: Recipe, model: nn.Module) -> teachers.Module:
    assert recipe.teacher is not None
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[recipe.teacher.autocast]
    return teachers.Module(model, autocast_dtype=dtype)


def fit_student(
    recipe: Recipe,
    student: nn.Module,
    teacher: teachers.Teacher | None,
    objective: Objective,
    *,
    run_dir: Path,
    train_loader: DataLoader,
    val_loader: DataLoader,
    max_steps: int,
    eval_every: int,
    progress: bool,
    callbacks: Sequence[Callback] = (),
    batch_transform: Callable[[Batch, int], Batch] | None = None,
    **changes: Any,
) -> tuple[Distiller, Any, float]:
    """Train ``student`` with the recipe's settings (``changes`` override some);
    returns (distiller, fit result, seconds)."""
    run = Distiller(
        student,
        teacher,
        objective,
        callbacks=callbacks,
        batch_transform=batch_transform,
        **_settings(
            recipe.train,
            seed=recipe.seed,
            run_dir=run_dir,
            progress=progress,
            eval_every=recipe.train.eval_every or eval_every,
            **changes,
        ),
    )
    started = time.perf_counter()
    result = run.fit(train_loader, val_loader, max_steps=max_steps)
    return run, result, time.perf_counter() - started


def train_student(
    recipe: Recipe,
    data: Data,
    *,
    objective: Objective,
    teacher: nn.Module | None,
    train_set: Dataset,
    run_dir: Path,
    max_steps: int,
    eval_every: int,
    progress: bool,
    spec: ModelSpec | None = None,
    peers: int = 1,
    ema_momentum: float | None = None,
    answers: teachers.Teacher | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one student (``spec``, default the recipe's) and measure it on the test split;
    with ``peers`` > 1, a ``Cohort`` of that many, seeded ``seed``, ``seed + 1``, …; with
    ``ema_momentum``, the teacher is the student's moving average (measured as
    ``metrics["ema_teacher"]``); with ``answers`` (a teacher cache) it learns from those
    instead of running ``teacher``."""
    spec = spec or recipe.student
    torch.manual_seed(recipe.seed)  # the same initial weights for every student
    student = model_from_spec(spec, data)
    if peers > 1:
        members = [student]
        for offset in range(1, peers):
            torch.manual_seed(recipe.seed + offset)
            members.append(model_from_spec(spec, data))
        student = Cohort(members)
    wrapped: teachers.Teacher | None = answers
    if ema_momentum is not None:
        wrapped = teachers.EMA(student, momentum=ema_momentum)
    elif teacher is not None and answers is None:
        wrapped = _teacher_module(recipe, teacher)
    run, result, seconds = fit_student(
        recipe,
        student,
        wrapped,
        objective,
        run_dir=run_dir,
        train_loader=loader(train_set, recipe, True),
        val_loader=loader(data.val, recipe, False),
        max_steps=max_steps,
        eval_every=eval_every,
        progress=progress,
    )
    metrics = run.evaluate(loader(data.test, recipe, False))
    if isinstance(wrapped, teachers.EMA):
        metrics["ema_teacher"] = {
            **evaluate_model(wrapped.model, data, recipe),
            **describe(wrapped.model, data, recipe),
        }
    return student, {
        **metrics,
        "train_seconds": seconds,
        "steps": result.steps,
        "best_step": result.best_step,
    }


def describe(model: nn.Module, data: Data, recipe: Recipe, weights: Path | None = None) -> dict:
    return {
        "parameters": parameter_count(model),
        "size_bytes": size_on_disk(model, weights),
        "latency_ms": cpu_latency_ms(
            model, data.test[0][0], recipe.output.latency_repeats, **_domain_of_first(model, data)
        ),
    }


def _domain_of_first(model: nn.Module, data: Data) -> dict[str, torch.Tensor]:
    """``domain=`` for a routed model's latency: the first test example's domain."""
    if not (isinstance(model, teachers.EnsembleModel) and model.combine == "route"):
        return {}
    return {"domain": torch.tensor([data.test[0][2]["domain"]])}


def evaluate_model(model: nn.Module, data: Data, recipe: Recipe, teacher: nn.Module | None = None):
    run = Distiller(
        model, _teacher_module(recipe, teacher) if teacher is not None else None, progress=False
    )
    return run.evaluate(loader(data.test, recipe, False))


def run_recipe(
    recipe: Recipe, *, out_dir: Path | None = None, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """Everything ``distill run`` does; returns the summary it writes to summary.json."""
    if recipe.task != "classification":
        from distill.lm_pipeline import run_lm_recipe

        return run_lm_recipe(recipe, out_dir=out_dir, progress=progress, log=log)
    run_dir = Path(out_dir) if out_dir is not None else recipe.output.dir / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    on_main(lambda: (run_dir / RECIPE_FILE).write_text(dump_recipe(recipe)))
    started = time.perf_counter()
    data = prepare_data(recipe)
    log(f"data: {recipe.data.dataset}, {data.regime}")

    teacher_model, teacher_info = (None, {})
    ema = recipe.teacher.ema_momentum if recipe.teacher and recipe.teacher.model == "ema" else None
    if recipe.teacher is not None and ema is None:
        teacher_model, teacher_info = get_teacher(recipe, data, progress, log)

    per_epoch = steps_per_epoch(data.student_train, recipe)
    budget = recipe.train.max_steps or per_epoch * recipe.train.epochs  # type: ignore[operator]
    if recipe.train.max_steps and recipe.train.epochs:
        budget = min(budget, per_epoch * recipe.train.epochs)
    models: dict[str, dict[str, Any]] = {}
    if teacher_model is not None:
        metrics = evaluate_model(teacher_model, data, recipe)
        models["teacher"] = {
            **metrics,
            **describe(teacher_model, data, recipe),
            "train_seconds": teacher_info.get("train_seconds", 0.0),
        }

    if recipe.baseline:
        log(
            f"label-only student {recipe.student.model}: {budget} steps on "
            f"{len(data.baseline_train):,} labelled examples"
        )
        baseline, metrics = train_student(
            recipe,
            data,
            objective=Objective(ce=Term(cross_entropy)),
            teacher=teacher_model,
            train_set=data.baseline_train,
            run_dir=run_dir / BASELINE_DIR,
            max_steps=budget,
            eval_every=per_epoch,
            progress=progress,
        )
        models["baseline"] = {**metrics, **describe(baseline, data, recipe)}

    common = dict(
        train_set=data.student_train, max_steps=budget, eval_every=per_epoch, progress=progress
    )
    # a teacher assistant, then born-again generations: each stage teaches the next
    stages: list[tuple[str, ModelSpec | None, str]] = []
    if recipe.assistant is not None:
        stages.append(
            ("assistant", recipe.assistant, f"teacher assistant {recipe.assistant.model}")
        )
    stages += [
        (f"generation_{g}", None, f"born-again generation {g} of {recipe.generations}")
        for g in range(1, recipe.generations)
    ]
    teacher_of_student = teacher_model
    for name, spec, description in stages:
        log(f"{description}: distilled first")
        model, metrics = train_student(
            recipe,
            data,
            objective=build_objective(recipe.objective, per_epoch),
            teacher=teacher_of_student,
            run_dir=run_dir / name,
            spec=spec,
            **common,
        )
        models[name] = {**metrics, **describe(model, data, recipe)}
        teacher_of_student = model.eval()

    answers = None
    if recipe.cache is not None and recipe.cache.use:
        assert teacher_model is not None  # the recipe checks it
        cache_info = build_classifier_cache(
            recipe, data, teacher_model, worker=process_index(), workers=num_processes(),
            progress=progress, log=log, together=True,
        )  # fmt: skip
        answers = cache_as_teacher(recipe)
        log(f"the distilled student learns from the teacher cache {cache_info['folder']}")
    log(
        f"distilled student {recipe.student.model}"
        + (f" ({recipe.peers} peers learning from each other)" if recipe.peers > 1 else "")
        + f": {budget} steps on {len(data.student_train):,} examples, objective "
        + ", ".join(recipe.objective)
    )
    student, metrics = train_student(
        recipe,
        data,
        objective=build_objective(recipe.objective, per_epoch),
        teacher=teacher_of_student,
        run_dir=run_dir,
        peers=recipe.peers,
        ema_momentum=ema,
        answers=answers,
        **common,
    )
    if "ema_teacher" in metrics:
        models["ema_teacher"] = metrics.pop("ema_teacher")
    if isinstance(student, Cohort):
        models.update(_peer_rows(student, data, recipe, run_dir, metrics))
    else:
        models["student"] = {
            **metrics,
            **describe(student, data, recipe, run_dir / ckpt.STUDENT_FILE),
        }
    if recipe.compress:
        from distill.compress.stages import run_compress

        assert teacher_model is not None  # the recipe checks it
        models.update(
            run_compress(recipe, data, student, teacher_model, run_dir, per_epoch, progress, log)
        )

    summary = {
        "name": recipe.name,
        "description": recipe.description,
        "dataset": recipe.data.dataset,
        "regime": data.regime,
        "teacher_model": recipe.teacher.model if recipe.teacher else None,
        "student_model": recipe.student.model,
        "objective": {name: term.loss for name, term in recipe.objective.items()},
        "steps": budget,
        "models": models,
        "gain_over_baseline": _gain(models),
        "gap_closed": _gap_closed(models),
        "seconds": time.perf_counter() - started,
    }
    _write_summary(run_dir, summary)
    if recipe.export is not None:  # after the summary, so a failed check leaves it readable
        models.update(_export_rows(recipe, run_dir, models, log))
        summary["seconds"] = time.perf_counter() - started
        _write_summary(run_dir, summary)
    return summary


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json and the report, by the main process."""
    from distill.report import write_report

    def write() -> None:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        write_report(run_dir, summary)

    on_main(write)


def _export_rows(
    recipe: Recipe, run_dir: Path, models: dict[str, dict[str, Any]], log: Log
) -> dict[str, dict[str, Any]]:
    """The recipe's ``export``: report rows for the ONNX graphs (``export_onnx``, …)."""
    from distill.compress.deploy import export_run

    spec = recipe.export
    assert spec is not None
    result = on_main(lambda: export_run(run_dir, **spec.model_dump(), log=log))
    if result is None:  # not the main process: it exports alone
        return {}
    stages = [k for k in models if k.startswith("compress_") and not k.endswith("_quantize")]
    source = models[stages[-1] if stages else "student"]
    return {
        f"export_{key}": {**row, "parameters": source["parameters"]}
        for key, row in result["models"].items()
        if key != "pytorch"
    }


def _peer_rows(
    cohort: Cohort, data: Data, recipe: Recipe, run_dir: Path, cohort_metrics: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each peer of a mutual-learning cohort measured and saved on its own
    (``peers/peer_<k>.safetensors``); peer 0 is reported as the student."""
    rows: dict[str, dict[str, Any]] = {}
    (run_dir / "peers").mkdir(exist_ok=True)
    for k, peer in enumerate(cohort.peers):
        weights = run_dir / "peers" / f"peer_{k}.safetensors"
        on_main(lambda peer=peer, weights=weights: ckpt.save_weights(peer, weights))
        metrics = {
            **evaluate_model(peer, data, recipe),
            "train_seconds": cohort_metrics["train_seconds"],
            "cohort_accuracy": cohort_metrics["accuracy"],
        }
        rows["student" if k == 0 else f"peer_{k}"] = {
            **metrics,
            **describe(peer, data, recipe, weights),
        }
    return rows


def _gain(models: dict[str, dict]) -> float | None:
    if "baseline" not in models:
        return None
    return models["student"]["accuracy"] - models["baseline"]["accuracy"]


def _gap_closed(models: dict[str, dict]) -> float | None:
    """Share of the teacher–baseline accuracy gap that distillation closes."""
    if "baseline" not in models or "teacher" not in models:
        return None
    gap = models["teacher"]["accuracy"] - models["baseline"]["accuracy"]
    if gap <= 0:
        return None
    return (models["student"]["accuracy"] - models["baseline"]["accuracy"]) / gap
