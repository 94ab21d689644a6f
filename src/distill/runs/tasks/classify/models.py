"""A classification run's models: built from the zoo, torchvision, timm or a run
directory, and its teacher: loaded, reused from the teacher store, trained, an ensemble
of members got like teachers, or PATE's partition teachers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill import teachers
from distill.data import domain_subset
from distill.errors import RecipeError
from distill.models import build_model
from distill.recipes import ModelSpec, Recipe
from distill.runs.store import fit_and_store_teacher, reuse_or_train
from distill.runs.task import loader
from distill.runs.tasks.classify.data import Data
from distill.runs.tasks.private.rows import pate_teachers
from distill.runs.workdir import Log, earlier_run, load_finished
from distill.teachers.kinds import TeacherKind
from distill.training import checkpoint as ckpt


def model_from_spec(spec: ModelSpec, data: Data) -> nn.Module:
    """Build a model; load ``checkpoint`` weights, or a run directory's student."""
    run_dir = Path(spec.model)
    if run_dir.is_dir():
        earlier = earlier_run(run_dir, spec.model)
        model = model_from_spec(earlier.student.model_copy(update={"checkpoint": None}), data)
        load_finished(model, run_dir)
    else:
        model = build_model(spec.model, data.num_classes, data.in_shape, spec.args, spec.pretrained)
    if spec.checkpoint is not None:
        if not spec.checkpoint.exists():
            raise RecipeError(f"checkpoint {spec.checkpoint} does not exist")
        ckpt.load_weights(model, spec.checkpoint)
    return model


def train_teacher(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    """Train the recipe's teacher on labels (its ``teacher.train`` settings) and store it."""
    spec = recipe.teacher
    if spec is not None and spec.kind in (TeacherKind.ENSEMBLE, TeacherKind.EMA):
        raise RecipeError(
            f"teacher.model {spec.model}: nothing to train beforehand ("
            + (
                "distill run trains and caches each member"
                if spec.kind is TeacherKind.ENSEMBLE
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
    info = fit_and_store_teacher(
        recipe,
        model,
        loader(train_set, recipe, True),
        loader(val_set, recipe, False),
        progress,
        log,
    )
    return model.eval(), info


def get_teacher(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    """The recipe's teacher: an ensemble of members (each got like a teacher), weights
    loaded as given, a teacher trained earlier for this recipe, or one trained now."""
    spec = recipe.teacher
    assert spec is not None
    if spec.kind is TeacherKind.ENSEMBLE:
        return get_ensemble(recipe, data, progress, log)
    if recipe.pate is not None:
        return pate_teachers(
            recipe,
            data.teacher_train,
            data.val,
            data.num_classes,
            lambda: model_from_spec(spec, data),
            progress,
            log,
        )
    has_weights = spec.checkpoint is not None or Path(spec.model).is_dir()
    if spec.train is None and not (has_weights or spec.pretrained):
        raise RecipeError(
            "teacher: give checkpoint (weights), a run directory as model, pretrained: true, "
            "or train (settings to train it, or to fine-tune pretrained weights)"
        )
    if has_weights or spec.train is None:
        log(f"teacher {spec.model}: loaded, not trained")
        return model_from_spec(spec, data).eval(), {"model": spec.model, "train_seconds": 0.0}
    return reuse_or_train(
        recipe,
        lambda: model_from_spec(spec, data),
        lambda: train_teacher(recipe, data, progress, log),
        log,
    )


def get_ensemble(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    spec = recipe.teacher
    assert spec is not None and spec.members is not None
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
