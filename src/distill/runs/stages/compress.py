"""A recipe's ``compress:`` stages: each changes the distilled student (prune, remove
channels, factorize, quantize), distils it from the original teacher to recover, and is
measured and saved, so every stage is a report row and can be loaded back on its own.

A stage's folder ``runs/<name>/compress/<k>_<kind>/`` holds its weights
(``student.safetensors``; quantized: integer data and scales), ``stage.json`` (the stage,
what it changed, its measurements) and the training run of its recovery. ``load_stage``
rebuilds the student of stage k from the run directory: the distilled student, then
each stage's change replayed and its weights loaded.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from distill.compress.lowrank import factorize, factorize_layer
from distill.compress.prune import (
    make_permanent,
    nonzero_parameters,
    prune_channels,
    sparsity,
)
from distill.compress.quantize import (
    convert_qat,
    load_quantized,
    prepare_qat,
    quantize_weights,
    save_quantized,
)
from distill.errors import CheckpointError
from distill.measure import parameter_count
from distill.methods.pruning import GradualPruning, KeepZeros, zero_masks
from distill.models import build_model
from distill.paths import sha256_file, write_json
from distill.recipes import CompressStage, Recipe, build_objective, validate_recipe
from distill.recipes.load import read_yaml
from distill.runs.fitting import LatencyBench, fit_student, latency, teacher_module
from distill.runs.task import Objectives, Task, loader
from distill.runs.workdir import RECIPE_FILE, Log, load_finished
from distill.training import Callback
from distill.training import checkpoint as ckpt
from distill.training.distributed import on_main

STAGES_DIR = "compress"
STAGE_FILE = "stage.json"


def stage_name(index: int, stage: CompressStage) -> str:
    return f"{index}_{stage.kind}"


def _change(stage: CompressStage, model: nn.Module, example: Tensor, budget: int) -> dict[str, Any]:
    """The stage's change to ``model`` before its training; what to replay on loading."""
    if stage.kind == "channels":
        before, after = prune_channels(model, example, stage.ratio, stage.skip)  # type: ignore[arg-type]
        return {"parameters_before": before, "parameters_after": after}
    if stage.kind == "factorize":
        changed = factorize(model, rank=stage.rank, energy=stage.energy, skip=tuple(stage.skip))
        return {"factorized": [[c.path, c.rank, c.full_rank] for c in changed]}
    if stage.kind == "quantize" and budget == 0:  # post-training: no QAT
        return {"quantized": quantize_weights(model, stage.scheme, stage.skip), "qat": False}
    if stage.kind == "quantize":
        return {"quantized": prepare_qat(model, stage.scheme, stage.skip), "qat": True}
    return {}


def run_compress(
    task: Task,
    recipe: Recipe,
    objectives: Objectives,
    student: nn.Module,
    teacher_model: nn.Module,
    run_dir: Path,
    budget: Any,
    bench: LatencyBench | None,
    log: Log,
) -> dict[str, dict[str, Any]]:
    """Run every stage of ``recipe.compress`` on ``student`` in place; returns a summary
    row per stage (``compress_<k>_<kind>``); ``recipe`` is the one the students followed,
    ``objectives.baseline`` what a ``recover: labels`` stage learns from. ``budget``
    (``runs.fitting.Budget``) gives the
    steps per epoch and the progress bar; each stage's model goes to ``bench`` (a copy:
    later stages change the student) to be timed with the others."""
    per_epoch, progress = budget.per_epoch, budget.progress
    rows: dict[str, dict[str, Any]] = {}
    masks: dict[str, Tensor] = {}
    uncompressed = copy.deepcopy(student).eval()  # the teacher of ``recover: student``
    data = task.data
    example = data.test[0][0].unsqueeze(0)
    meta = {"num_classes": data.num_classes, "in_shape": list(data.in_shape)}
    for index, stage in enumerate(recipe.compress, start=1):
        name = stage_name(index, stage)
        folder = run_dir / STAGES_DIR / name
        done = finished_stage(folder, log)
        if done is not None:  # finished by an earlier run: its student, rebuilt
            student = load_stage(run_dir, index, task.load_student(run_dir))
            masks = (
                zero_masks(student) if "prune" in [s.kind for s in recipe.compress[:index]] else {}
            )
            rows[f"compress_{name}"] = done
            done.update(latency(task, student, bench, f"compress_{name}"))
            log(f"compress stage {index}: {stage.kind}, finished by an earlier run, reused")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        budget = stage.max_steps or per_epoch * (stage.epochs or 0)
        change = _change(stage, student, example, budget)
        callbacks: list[Callback] = []
        if stage.kind == "prune":
            every = max(1, budget // 100)
            callbacks.append(GradualPruning(stage.sparsity, every, stage.end, stage.skip))  # type: ignore[arg-type]
        elif masks:
            callbacks.append(KeepZeros(masks))
        log(f"compress stage {index}: {stage.kind} " + _describe_stage(stage, change, budget))
        if budget:
            changes: dict[str, Any] = {"lr": stage.lr} if stage.lr else {}
            if stage.kind == "prune":
                changes["select_metric"] = None  # the end of the schedule, not an earlier best
            teacher, objective = None, objectives.baseline
            if stage.recover != "labels":
                source = teacher_model if stage.recover == "teacher" else uncompressed
                teacher = teacher_module(recipe, source)
                objective = build_objective(recipe.objective, per_epoch)
            fit_student(
                recipe,
                student,
                teacher,
                objective,
                run_dir=folder,
                train_loader=loader(data.student_train, recipe, True),
                val_loader=loader(data.val, recipe, False),
                max_steps=budget,
                eval_every=per_epoch,
                progress=progress,
                callbacks=callbacks,
                resume=False,  # an interrupted stage starts over: it changed the model first
                log=log,
                **changes,
            )
        student.eval()
        if stage.kind == "prune":
            make_permanent(student)
            masks = zero_masks(student)
        if stage.kind == "quantize":
            if change["qat"]:
                convert_qat(student, stage.scheme)
            size = on_main(functools.partial(save_quantized, student, folder / ckpt.STUDENT_FILE))
        else:
            on_main(functools.partial(ckpt.save_weights, student, folder / ckpt.STUDENT_FILE))
            size = (folder / ckpt.STUDENT_FILE).stat().st_size
        metrics = task.evaluate(student, teacher_module(recipe, teacher_model))
        row = {
            **metrics,
            "parameters": nonzero_parameters(student) if masks else parameter_count(student),
            "size_bytes": size,
            "train_seconds": time.perf_counter() - started,
            "steps": budget,
        }
        if masks:
            row["sparsity"] = sparsity(student)
        rows[f"compress_{name}"] = row
        frozen = copy.deepcopy(student) if bench is not None else student  # later stages change it
        timing = latency(task, frozen, bench, f"compress_{name}")
        record = {"stage": stage.model_dump(mode="json"), "change": change, **meta, "row": row}
        record["sha256"] = weights_sum(folder)  # written last: the stage is finished
        on_main(functools.partial(write_json, folder / STAGE_FILE, record, indent=2))
        row.update(timing)
    return rows


def weights_sum(folder: Path) -> str:
    return sha256_file(folder / ckpt.STUDENT_FILE)


def finished_stage(folder: Path, log: Log) -> dict[str, Any] | None:
    """The row of a stage an earlier run finished in ``folder`` (``stage.json``, written
    last) whose weights match their checksum; None otherwise (saying why if they changed)."""
    marker = folder / STAGE_FILE
    if not marker.exists():
        return None
    record = json.loads(marker.read_text())
    if record.get("sha256") != weights_sum(folder):
        log(f"{folder / ckpt.STUDENT_FILE}: missing or changed since it was finished; redoing it")
        return None
    return record["row"]


def _describe_stage(stage: CompressStage, change: dict[str, Any], budget: int) -> str:
    if stage.kind == "prune":
        what = f"to {stage.sparsity:.0%} sparsity (cubic schedule)"
    elif stage.kind == "channels":
        what = (
            f"{stage.ratio:.0%} of the channels removed: {change['parameters_before']:,} -> "
            f"{change['parameters_after']:,} parameters"
        )
    elif stage.kind == "factorize":
        what = f"{len(change['factorized'])} layers factorized"
    elif change["qat"]:
        what = f"{stage.scheme} quantization-aware training of {len(change['quantized'])} Linears"
    else:
        what = f"{stage.scheme} post-training quantization of {len(change['quantized'])} Linears"
    how = {
        "teacher": "distillation from the teacher",
        "student": "distillation from the uncompressed student",
        "labels": "labels only",
    }[stage.recover]
    return f"{what}; {budget} steps of {how}"


# -- loading a stage back ---------------------------------------------------------------------


def resize_like(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Give ``model``'s parameters and buffers the shapes in ``state`` (a structurally
    pruned copy of it), updating the layers' channel and feature counts."""
    for key, value in state.items():
        path, _, attribute = key.rpartition(".")
        module = model.get_submodule(path)
        current = getattr(module, attribute)
        if current is None or current.shape == value.shape:
            continue
        if isinstance(current, nn.Parameter):
            setattr(module, attribute, nn.Parameter(torch.empty_like(value)))
        else:
            module.register_buffer(attribute, torch.empty_like(value))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.num_features = module.weight.shape[0]


def load_stage(run_dir: Path, index: int, student: nn.Module | None = None) -> nn.Module:
    """The student after compress stage ``index`` (1-based) of the run in ``run_dir``:
    ``student``, the run's distilled student as its task loads it (None: built from the
    recipe's student spec, a classifier), with each stage's change replayed and its
    weights loaded."""
    run_dir = Path(run_dir)
    recipe = validate_recipe(read_yaml(run_dir / RECIPE_FILE), str(run_dir / RECIPE_FILE))
    if not 1 <= index <= len(recipe.compress):
        raise ValueError(
            f"{run_dir} has compress stages 1..{len(recipe.compress)}; got stage {index}"
        )
    folders = [
        run_dir / STAGES_DIR / stage_name(k, stage)
        for k, stage in enumerate(recipe.compress[:index], start=1)
    ]
    for folder in folders:
        if not (folder / STAGE_FILE).exists():
            raise FileNotFoundError(f"{folder / STAGE_FILE} is missing: did that stage finish?")
    model = student
    if model is None:
        first = json.loads((folders[0] / STAGE_FILE).read_text())
        spec = recipe.student
        model = build_model(spec.model, first["num_classes"], tuple(first["in_shape"]), spec.args)
        load_finished(model, run_dir)
    for stage, folder in zip(recipe.compress[:index], folders, strict=True):
        record = json.loads((folder / STAGE_FILE).read_text())
        weights = folder / ckpt.STUDENT_FILE
        if record.get("sha256") != weights_sum(folder):
            raise CheckpointError(
                f"{weights}: differs from the SHA-256 that {STAGE_FILE} recorded when the stage "
                "finished, so it is damaged or was changed; restore it from a copy, or rerun "
                "`distill run` on the run's recipe (with --out pointing at it) to redo the stage"
            )
        if stage.kind == "quantize":
            load_quantized(model, weights, stage.scheme, stage.skip)
            continue
        if stage.kind == "factorize":
            for path, rank, _ in record["change"]["factorized"]:
                parent, _, child = path.rpartition(".")
                owner = model.get_submodule(parent) if parent else model
                setattr(owner, child, factorize_layer(getattr(owner, child), rank))
        if stage.kind == "channels":
            resize_like(model, load_file(str(weights)))
        ckpt.load_weights(model, weights)
    return model.eval()
