"""``task: classification``: a labelled dataset (a transfer set when only some labels are
kept), teachers from the zoo, torchvision, timm, a run directory, or an ensemble of them,
students measured by test accuracy, size on disk and CPU latency per example."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset, default_collate

from distill import teachers
from distill.batch import as_batch, logits_of
from distill.cache import Layout
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
from distill.data.mixing import BatchMix
from distill.errors import DistillError, RecipeError
from distill.methods import Cohort
from distill.methods.inversion import batchnorm_layers
from distill.methods.pate import Votes
from distill.models import build_model
from distill.models.lora import with_lora
from distill.objective import Objective
from distill.recipes import ModelSpec, Recipe, build_objective, validate_recipe
from distill.recipes.load import read_yaml
from distill.runs.cache import make_layout
from distill.runs.common import (
    RECIPE_FILE,
    Lesson,
    Log,
    Splits,
    Task,
    loader,
    recipe_objective,
)
from distill.runs.private import (
    pate_rows,
    pate_teachers,
    privacy_note,
    split_public,
    synthetic_rows,
)
from distill.runs.store import (
    NOT_SHAPING_WEIGHTS,
    fit_and_store_teacher,
    store_lock,
    stored_teacher,
    teacher_cache_dir,
)
from distill.runs.workdir import load_finished
from distill.taps import Taps
from distill.training import checkpoint as ckpt


@dataclass
class Data(Splits):
    """A classification run's splits, plus the teacher's training rows and the shapes."""

    teacher_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    public: Dataset | None = None  # pate: the public pool the student's queries come from
    privacy: dict[str, Any] | None = None  # pate: the answers' (ε, δ) and what they cover


def prepare_data(recipe: Recipe) -> Data:
    spec = recipe.data
    train, test, num_classes = load_dataset(
        spec.dataset, spec.path, allow_download=spec.download, image_size=spec.image_size,
        columns=spec.columns, splits=spec.splits,
    )  # fmt: skip
    if spec.domains:
        try:
            domain_of_class = class_to_domain(spec.domains, num_classes)
        except ValueError as error:
            raise RecipeError(str(error)) from error
        train, test = WithDomain(train, domain_of_class), WithDomain(test, domain_of_class)
    if recipe.cache is not None:  # ids for the teacher-output cache, unique over both sets
        train, test = WithExampleId(train), WithExampleId(test, offset=len(train))
    teacher_train, teacher_val = train_val_split(train, spec.val_fraction, spec.split_seed)
    public = None
    if recipe.pate is not None:
        public, teacher_train = split_public(teacher_train, recipe)
    if spec.labeled is None:
        student_train = baseline_train = teacher_train
        val = teacher_val
        regime = f"all {len(teacher_train):,} training labels"
        if public is not None:
            regime = (
                f"{len(teacher_train):,} private labelled rows split among "
                f"{recipe.pate.teachers} teachers; the student sees only public inputs "  # type: ignore[union-attr]
                f"({len(public):,} set aside, labels hidden) and the teachers' noisy answers"
            )
    else:
        baseline_train, val, student_train = labeled_split(
            train, spec.labeled, spec.val_fraction, spec.split_seed
        )
        if spec.transfer_classes is not None:
            student_train = only_classes(student_train, train, spec.transfer_classes)
        regime = (
            f"{spec.labeled:,} labels ({len(baseline_train):,} train + {len(val):,} validation); "
            + (
                f"the distilled student sees no training images, only {spec.synthetic.examples:,} "
                "inputs synthesised from the teacher (DeepInversion)"
                if spec.synthetic is not None
                else f"the distilled student also learns from the teacher on "
                f"{len(student_train):,} training inputs (a transfer set)"
            )
        )
    if spec.augment:
        teacher_train, student_train, baseline_train = (
            Augmented(teacher_train),
            Augmented(student_train),
            Augmented(baseline_train),
        )
    return Data(
        student_train=student_train,
        baseline_train=baseline_train,
        val=val,
        test=test,
        regime=regime,
        teacher_train=teacher_train,
        num_classes=num_classes,
        in_shape=tuple(train[0][0].shape),
        public=public,
    )


def only_classes(transfer: Dataset, labelled_source: Dataset, classes: list[int]) -> Subset:
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
    info = fit_and_store_teacher(
        recipe, model, loader(train_set, recipe, True), loader(val_set, recipe, False),
        progress, log,
    )  # fmt: skip
    return model.eval(), info


def get_teacher(recipe: Recipe, data: Data, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    """The recipe's teacher: an ensemble of members (each got like a teacher), weights
    loaded as given, a teacher trained earlier for this recipe, or one trained now."""
    spec = recipe.teacher
    assert spec is not None
    if spec.model == "ensemble":
        return get_ensemble(recipe, data, progress, log)
    if recipe.pate is not None:
        return pate_teachers(
            recipe, data.teacher_train, data.val, data.num_classes,
            lambda: model_from_spec(spec, data), progress, log,
        )  # fmt: skip
    has_weights = spec.checkpoint is not None or Path(spec.model).is_dir()
    if spec.train is None and not (has_weights or spec.pretrained):
        raise RecipeError(
            "teacher: give checkpoint (weights), a run directory as model, pretrained: true, "
            "or train (settings to train it, or to fine-tune pretrained weights)"
        )
    if has_weights or spec.train is None:
        log(f"teacher {spec.model}: loaded, not trained")
        return model_from_spec(spec, data).eval(), {"model": spec.model, "train_seconds": 0.0}
    with store_lock(teacher_cache_dir(recipe), log):  # another run may be training it
        stored = stored_teacher(recipe, lambda: model_from_spec(spec, data), log)
        return stored if stored is not None else train_teacher(recipe, data, progress, log)


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


class Classification(Task):
    """``task: classification``."""

    name = "classification"
    diagnosable = True
    exports = True
    cache_holds_test = True

    def prepare(self, recipe: Recipe, progress: bool, log: Log) -> Data:
        return prepare_data(recipe)

    def teacher(
        self, recipe: Recipe, data: Splits, progress: bool, log: Log
    ) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(data, Data)
        return get_teacher(recipe, data, progress, log)

    def input_mix(self, recipe: Recipe, data: Splits) -> BatchMix | None:
        spec = recipe.data.mix  # type: ignore[union-attr]
        if spec is None:
            return None
        assert isinstance(data, Data)
        return BatchMix(spec.kind, data.num_classes, spec.alpha, spec.prob, seed=recipe.seed)

    def preflight(self, recipe: Recipe, data: Splits) -> None:
        """Every model the recipe names is built (without downloads) and run on two test
        examples: it must give one output per class, and have the modules the objective's
        terms tap."""
        assert isinstance(data, Data)
        objective = build_objective(recipe.objective, 1)
        batch = as_batch(default_collate([data.test[0], data.test[1]]))
        with torch.random.fork_rng():  # no draw from the run's random streams
            for field, spec, taps in self.named_models(recipe, objective):
                try:
                    model = model_from_spec(spec.model_copy(update={"pretrained": False}), data)
                    model = with_lora(model, spec)  # student.peft's target modules exist
                    if field == "student" and recipe.peers > 1:  # the taps are the cohort's
                        model = Cohort([model, copy.deepcopy(model)])
                    Taps(model, taps)  # an unknown path is an error listing the closest
                    if field == "teacher" and recipe.data.synthetic is not None:  # type: ignore[union-attr]
                        batchnorm_layers(model)  # DeepInversion needs their statistics
                    with torch.no_grad():
                        outputs = logits_of(batch.run(model.eval())).shape[-1]
                except (DistillError, TypeError, RuntimeError, OSError) as error:
                    raise RecipeError(f"{field}.model {spec.model}: {error}") from None
                if outputs != data.num_classes:
                    raise RecipeError(
                        f"{field}.model {spec.model} gives {outputs} outputs per example; "
                        f"the data has {data.num_classes} classes"
                    )

    @staticmethod
    def named_models(
        recipe: Recipe, objective: Objective
    ) -> list[tuple[str, ModelSpec, list[str]]]:
        """(field, spec, taps it must have) of every model a run builds from a spec."""
        found = [("student", recipe.student, objective.student_taps)]
        if recipe.assistant is not None:
            found.append(("assistant", recipe.assistant, objective.student_taps))
        spec = recipe.teacher
        if spec is not None and spec.model == "ensemble":
            found += [
                (f"teacher.members[{i}]", member, []) for i, member in enumerate(spec.members or [])
            ]
        elif spec is not None and spec.model != "ema":
            found.append(("teacher", spec, objective.teacher_taps))
        return found

    def train_teacher(self, recipe: Recipe, data: Splits, progress: bool, log: Log) -> dict:
        assert isinstance(data, Data) and recipe.teacher is not None
        if recipe.pate is not None:  # each partition's teacher has its own store entry
            return get_teacher(recipe, data, progress, log)[1]
        with store_lock(teacher_cache_dir(recipe), log):
            return train_teacher(recipe, data, progress, log)[1]

    def transfer_set(
        self, recipe: Recipe, data: Splits, teacher: nn.Module, progress: bool, log: Log
    ) -> Data:
        """Data-free and PATE recipes: the student's rows, made from the teacher."""
        assert isinstance(data, Data)
        if recipe.data.synthetic is not None:  # type: ignore[union-attr]
            rows = synthetic_rows(recipe, teacher, data.in_shape, data.num_classes, progress, log)
            return dataclasses.replace(data, student_train=rows)
        if recipe.pate is not None:
            assert isinstance(teacher, Votes) and data.public is not None
            rows, privacy = pate_rows(recipe, data.public, teacher, progress, log)
            return dataclasses.replace(data, student_train=rows, privacy=privacy)
        return data

    def stage_lesson(
        self, recipe: Recipe, data: Splits, teacher: nn.Module | None, stage: str, per_epoch: int
    ) -> Lesson | None:
        """A PATE student learns the answered labels only, never the teachers' outputs."""
        if recipe.pate is None:
            return None
        return Lesson(recipe_objective(recipe, per_epoch, None), None)

    def build_student(
        self, recipe: Recipe, data: Splits, spec: ModelSpec, teacher: nn.Module | None
    ) -> nn.Module:
        assert isinstance(data, Data)
        return model_from_spec(spec, data)

    def load_student(self, run_dir: Path, recipe: Recipe, data: Splits) -> nn.Module:
        assert isinstance(data, Data)
        return model_from_spec(ModelSpec(model=str(run_dir)), data)

    def latency_input(self, model: nn.Module, data: Splits) -> tuple[Tensor, dict[str, Any]]:
        example = data.test[0]
        routed = isinstance(model, teachers.EnsembleModel) and model.combine == "route"
        # a routed model's latency: the first test example, with its domain
        return example[0], {"domain": torch.tensor([example[2]["domain"]])} if routed else {}

    def cache_rows(self, data: Splits) -> Dataset:
        return ConcatDataset([data.student_train, data.val, data.test])

    def cache_layout(self, recipe: Recipe, data: Splits, teacher: nn.Module, rows: int) -> Layout:
        """A classifier's cache: its dense logits, exact, usable at any temperature."""
        fingerprint = self.cache_fingerprint(recipe, data)
        return make_layout(recipe, kind="dense", num_examples=rows, fingerprint=fingerprint)

    def cache_fingerprint(self, recipe: Recipe, data: Splits) -> dict[str, Any]:
        return teacher_fingerprint(recipe)

    def summary_fields(
        self, recipe: Recipe, data: Splits, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        assert isinstance(data, Data)
        after: dict[str, Any] = {"gap_closed": gap_closed(models)}
        if data.privacy is not None:
            after.update(privacy=data.privacy, data_note=privacy_note(data.privacy))
            after["row_labels"] = {
                "teacher": f"teachers' plain vote ({data.privacy['teachers']}, no noise)",
                "student": "student, on the noisy answers",
            }
        elif recipe.data.synthetic is not None:  # type: ignore[union-attr]
            after["row_labels"] = {"student": "student, distilled on synthetic inputs"}
        before = {"dataset": recipe.data.dataset, "select_metric": recipe.train.select_metric}
        return before, after

    def evaluate_run(self, run_dir: Path, recipe: Recipe) -> dict[str, float]:
        data = prepare_data(recipe)
        return self.evaluate(self.load_student(run_dir, recipe, data), recipe, data, None)

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"test accuracy {100 * metrics['accuracy']:.2f}% "
            f"(loss {metrics['loss']:.4f}, {int(metrics['examples']):,} examples)"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"validation accuracy {100 * info['val']['accuracy']:.2f}%"


def teacher_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a trained teacher's cached answers depend on: it was trained for this data and
    seed."""
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


def gap_closed(models: dict[str, dict]) -> float | None:
    """Share of the teacher–baseline accuracy gap that distillation closes."""
    if "baseline" not in models or "teacher" not in models:
        return None
    gap = models["teacher"]["accuracy"] - models["baseline"]["accuracy"]
    if gap <= 0:
        return None
    return (models["student"]["accuracy"] - models["baseline"]["accuracy"]) / gap
