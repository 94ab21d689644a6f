"""``task: clip``: distil a CLIP-style image–text teacher into a small image encoder.

- **Data** (``runs.clip_data``): a labelled image dataset with captions from templates or
  each image's own; a frozen text tower embeds the captions and the classes' zero-shot
  prompts once. With ``data.labeled`` only that many training images keep their caption;
  the teacher answers for the others (a transfer set).
- **Models**: every image model is a ``ZeroShotClassifier``: an image encoder (a zoo,
  torchvision or timm model whose head is the learned projection to the text width, an
  ``hf-clip:`` image tower, or for the student ``teacher``: the teacher's tower with fewer
  layers) with the class prompts and the teacher's logit scale. Its output is zero-shot
  class logits; its ``encoder`` tap is the image embedding.
- **Teacher**: ``hf-clip:<id or folder>`` (loaded, with its own text tower and scale), or
  any image model trained contrastively (symmetric InfoNCE at a learned logit scale)
  against the text tower on every training caption, stored with its scale.
- **Students**: the recipe's objective; a CLIP loss taps ``encoder`` and takes the
  teacher's logit scale unless the recipe says otherwise. The baseline learns from the
  captioned images alone with the contrastive loss.
- **Metrics**: zero-shot accuracy (``accuracy``), KL and agreement of the zero-shot class
  distributions with the teacher's, linear-probe accuracy, image→text and text→image
  recall@1/5.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from distill import teachers
from distill.batch import as_batch
from distill.errors import DistillError, RecipeError
from distill.losses import clip_contrastive
from distill.losses.registry import loss_info, loss_parameters
from distill.measure import linear_probe_accuracy, retrieval_recall
from distill.methods.clip import LearnedScaleContrastive
from distill.models import build_model
from distill.models.clip import ZeroShotClassifier, embed_images, is_hf_clip, load_hf_clip
from distill.models.shrink import student_from_teacher
from distill.objective import Objective, Term
from distill.recipes import ModelSpec, Recipe, build_objective
from distill.runs.report.tables import SummaryLayout, register_layout
from distill.runs.stages.cache import DenseAnswers
from distill.runs.store import (
    fit_and_store_teacher,
    reuse_or_train,
    teacher_fingerprint,
    train_again,
)
from distill.runs.task import (
    Diagnosable,
    Exportable,
    Objectives,
    Task,
    gap_closed,
    loader,
)
from distill.runs.tasks.clip.data import INITIAL_SCALE, ClipData, prepare_data
from distill.runs.workdir import Log, earlier_run, load_finished
from distill.taps import Taps
from distill.training import Distiller
from distill.training import checkpoint as ckpt

ENCODER = "encoder"  # the tap of a ZeroShotClassifier's image embedding


def image_encoder(spec: ModelSpec, data: ClipData) -> nn.Module:
    """The image encoder ``spec`` names, giving embeddings as wide as the text tower's."""
    if is_hf_clip(spec.model):  # a ModelError names the model if it will not load
        return copy.deepcopy(load_hf_clip(spec.model)[0]).requires_grad_(True)
    width = data.prompts.shape[1]  # a model's head is its projection to the text width
    return build_model(spec.model, width, data.in_shape, spec.args, spec.pretrained)


def cut_from_teacher(tower: nn.Module, spec: ModelSpec) -> nn.Module:
    """``student: {model: teacher, args: {keep: ...}}``: the teacher's image tower with
    the layers ``keep`` selects, weights included (a trainable copy)."""
    try:
        return student_from_teacher(tower, spec.args.get("keep", "every_other"))
    except ValueError as error:
        raise RecipeError(f"student.args.keep: {error}") from None


def clip_model(spec: ModelSpec, data: ClipData, scale: float) -> ZeroShotClassifier:
    """``spec``'s image encoder as a zero-shot classifier; ``checkpoint`` weights, or a CLIP
    run directory's student, loaded (with the prompts and scale it was saved with)."""
    run_dir = Path(spec.model)
    if run_dir.is_dir():
        earlier = earlier_run(run_dir, spec.model)
        if earlier.task != "clip":
            raise RecipeError(f"model {spec.model}: a task {earlier.task} run, not a clip one")
        student = earlier.student.model_copy(update={"checkpoint": None})
        if student.copies_teacher:  # cut from the earlier teacher's image tower
            assert earlier.teacher is not None
            encoder = image_encoder(earlier.teacher, data)
            model = ZeroShotClassifier(cut_from_teacher(encoder, student), data.prompts, scale)
        else:
            model = clip_model(student, data, scale)
        load_finished(model, run_dir)
    else:
        model = ZeroShotClassifier(image_encoder(spec, data), data.prompts, scale)
    if spec.checkpoint is not None:
        if not spec.checkpoint.exists():
            raise RecipeError(f"checkpoint {spec.checkpoint} does not exist")
        ckpt.load_weights(model, spec.checkpoint)
    return model


def train_teacher(
    recipe: Recipe, data: ClipData, progress: bool, log: Log
) -> tuple[nn.Module, dict]:
    """Train the teacher's image tower contrastively against the text tower, at a learned
    logit scale, on every training caption; store it with its scale."""
    spec = recipe.teacher
    if spec is None or spec.train is None:
        raise RecipeError("teacher.train is not set: the recipe says nothing about how to train it")
    if is_hf_clip(spec.model):
        raise RecipeError("teacher.train: an hf-clip: teacher is used as loaded; drop train")
    torch.manual_seed(recipe.seed)
    model = clip_model(spec, data, INITIAL_SCALE)
    contrastive = LearnedScaleContrastive(INITIAL_SCALE)

    def learned_scale() -> dict[str, float]:
        model.logit_scale.fill_(contrastive.scale)  # stored with the weights
        return {"logit_scale": contrastive.scale}

    log(
        f"training the teacher's image tower {spec.model} contrastively on "
        f"{len(data.teacher_train):,} captioned images"  # type: ignore[arg-type]
    )
    info = fit_and_store_teacher(
        recipe,
        model,
        loader(data.teacher_train, recipe, True),
        loader(data.val, recipe, False),
        progress,
        log,
        objective=Objective(clip=Term(contrastive, student=ENCODER)),
        finish=learned_scale,
    )
    return model.eval(), info


def get_teacher(recipe: Recipe, data: ClipData, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    spec = recipe.teacher
    assert spec is not None
    if is_hf_clip(spec.model):
        if spec.train is not None:
            raise RecipeError("teacher.train: an hf-clip: teacher is used as loaded; drop train")
        model = clip_model(spec, data, load_hf_clip(spec.model)[2]).requires_grad_(False)
        info: dict[str, Any] = {"model": spec.model, "train_seconds": 0.0}
        log(f"teacher {spec.model}: loaded, not trained")
    elif spec.checkpoint is not None or Path(spec.model).is_dir() or spec.train is None:
        if spec.train is None and spec.checkpoint is None and not Path(spec.model).is_dir():
            raise RecipeError(
                "teacher: give checkpoint (weights), a clip run directory as model, an "
                "hf-clip: model, or train (settings to train its image tower)"
            )
        model = clip_model(spec, data, INITIAL_SCALE)  # the weights hold the scale
        info = {"model": spec.model, "train_seconds": 0.0}
        log(f"teacher {spec.model}: loaded, not trained")
    else:
        model, info = reuse_or_train(
            recipe,
            lambda: clip_model(spec, data, INITIAL_SCALE),
            lambda: train_teacher(recipe, data, progress, log),
            log,
        )
    return model.eval(), {**info, "logit_scale": float(model.logit_scale)}


def clip_terms(recipe: Recipe, scale: float) -> Recipe:
    """The recipe with what a CLIP term leaves out filled in: taps at the image embedding
    (``encoder``) and the teacher's ``logit_scale``."""
    terms = {}
    for name, term in recipe.objective.items():
        info, update = loss_info(term.loss), {}
        reads = set(info.reads)
        if "student_features" in reads and term.student is None:
            update["student"] = ENCODER
        if "teacher_features" in reads and term.teacher is None:
            update["teacher"] = ENCODER
        if "logit_scale" in loss_parameters(info.fn) and "logit_scale" not in term.options:
            update["options"] = {**term.options, "logit_scale": scale}
        terms[name] = term.model_copy(update=update) if update else term
    return recipe.model_copy(update={"objective": terms})


class Clip(Task, DenseAnswers, Exportable, Diagnosable):
    """``task: clip``. ``logit_scale``: the teacher's, once it is known (the students'
    zero-shot logits and the contrastive terms use it)."""

    name = "clip"
    data: ClipData

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        self.logit_scale = INITIAL_SCALE

    def prepare(self, progress: bool, log: Log) -> ClipData:
        self.data = prepare_data(self.recipe, log)
        return self.data

    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        model, info = get_teacher(self.recipe, self.data, progress, log)
        self.logit_scale = info["logit_scale"]
        return model, info

    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        recipe = self.recipe
        return train_again(recipe, lambda: train_teacher(recipe, self.data, progress, log), log)

    def preflight(self) -> None:
        """The student (and a teacher to build) is built and run on two test images; its
        embedding must be as wide as the text tower's, with the taps the objective reads."""
        recipe, data = self.recipe, self.data
        objective = build_objective(clip_terms(recipe, 1.0).objective, 1)
        batch = as_batch(default_collate([data.test[0], data.test[1]]))
        named = [("student", recipe.student, objective.student_taps)]
        teacher = recipe.teacher
        if teacher is not None and not is_hf_clip(teacher.model):
            named.append(("teacher", teacher, objective.teacher_taps))
        with torch.random.fork_rng():  # no draw from the run's random streams
            for field, spec, taps in named:
                if spec.copies_teacher:
                    continue  # built from the teacher once it is there
                try:
                    model = clip_model(spec.model_copy(update={"pretrained": False}), data, 1.0)
                    Taps(model, taps)  # an unknown path is an error listing the closest
                    with torch.no_grad():
                        model.eval()(*batch.args)
                except (DistillError, TypeError, RuntimeError, OSError, ValueError) as error:
                    raise RecipeError(f"{field}.model {spec.model}: {error}") from None

    def objectives(self) -> Objectives:
        """The CLIP terms filled in (taps at the image embedding, the teacher's scale); the
        label-only student learns CLIP's contrastive loss at that scale, on the captioned
        images alone."""
        scale = self.logit_scale
        baseline = Objective(contrastive=Term(clip_contrastive, student=ENCODER, logit_scale=scale))
        return Objectives(clip_terms(self.recipe, scale), baseline)

    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        if not spec.copies_teacher:
            return clip_model(spec, self.data, self.logit_scale)
        assert isinstance(teacher, ZeroShotClassifier)  # the recipe checks it
        encoder = cut_from_teacher(teacher.encoder, spec)
        return ZeroShotClassifier(encoder, self.data.prompts, self.logit_scale)

    def load_student(self, run_dir: Path) -> nn.Module:
        return clip_model(ModelSpec(model=str(run_dir)), self.data, self.logit_scale)

    def evaluate(self, model: nn.Module, judge: Any = None) -> dict[str, Any]:
        """Zero-shot accuracy and KL (``Distiller.evaluate``), then the embeddings' linear
        probe and retrieval recall."""
        assert isinstance(model, ZeroShotClassifier)
        data = self.data
        test = loader(data.test, self.recipe, False)
        metrics = Distiller(model, judge, progress=False).evaluate(test)
        size = self.recipe.data.eval_batch_size
        train_x, train_y = embed_images(model.encoder, data.probe_train, size)
        test_x, test_y = embed_images(model.encoder, data.test, size)
        metrics["linear_probe"] = linear_probe_accuracy(train_x, train_y, test_x, test_y)
        # the test images' captions are the gallery of texts
        used, owner = torch.tensor(data.test.choice).unique(return_inverse=True)  # type: ignore[attr-defined]
        metrics.update(retrieval_recall(test_x, data.caption_embeddings[used], owner))
        return metrics

    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        return self.data.test[0][0], {}

    def cache_model(self, teacher: nn.Module) -> nn.Module:
        """The image tower: the cache keeps embeddings, from which the zero-shot logits
        follow (``ZeroShotAnswers``)."""
        assert isinstance(teacher, ZeroShotClassifier)
        return teacher.encoder

    def cached_teacher(self, answers: teachers.Cached) -> teachers.Teacher:
        return teachers.ZeroShotAnswers(answers, self.data.prompts, self.logit_scale, ENCODER)

    def cache_fingerprint(self) -> dict[str, Any]:
        """A classifier's, and the captions its teacher was trained against."""
        captions = self.recipe.data.captions.model_dump(mode="json")  # type: ignore[union-attr]
        return {**teacher_fingerprint(self.recipe), "captions": captions}

    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        before = {
            "task": "clip",
            "dataset": self.recipe.data.dataset,
            "text_tower": self.data.text_tower,
            "logit_scale": self.logit_scale,
        }
        return before, {"gap_closed": gap_closed(models)}

    def doctor_notes(self, teacher: nn.Module) -> list[str]:
        return [
            "CLIP teacher: every check reads its zero-shot class logits, the class prompts at "
            f"its logit scale {float(teacher.logit_scale):.1f}; a temperature T divides them "
            "(a logit scale of scale / T), and the capacity probe fits the student's zero-shot "
            "logits to the teacher's"
        ]

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"zero-shot accuracy {100 * metrics['accuracy']:.2f}%, linear probe "
            f"{100 * metrics['linear_probe']:.2f}%, image→text R@1 "
            f"{100 * metrics['image_to_text_r1']:.1f}% ({int(metrics['examples']):,} test images)"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return (
            f"validation zero-shot accuracy {100 * info['val']['accuracy']:.2f}%, logit scale "
            f"{info['logit_scale']:.1f}"
        )


register_layout(Clip.name, SummaryLayout(zero_shot=True))
