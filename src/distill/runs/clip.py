"""``task: clip``: distil a CLIP-style image–text teacher into a small image encoder.

- **Data**: a labelled image dataset whose classes get captions from templates
  (``data.captions``); a frozen text tower embeds the captions and the classes' zero-shot
  prompts once. With ``data.labeled`` only that many training images keep their caption;
  the others form a transfer set, each with a text from the caption pool that says
  nothing about it (for losses that compare with texts), and the teacher answers for them.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset, default_collate

from distill import teachers
from distill.batch import as_batch
from distill.cache import Layout
from distill.data import Augmented, WithExampleId, labeled_split, load_dataset, train_val_split
from distill.data.captions import (
    CLASS_NAMES,
    FASHION_MNIST_DESCRIPTIONS,
    CaptionedImages,
    class_captions,
    class_prompts,
)
from distill.errors import DistillError, RecipeError
from distill.losses import clip_contrastive
from distill.losses.registry import loss_info, loss_parameters
from distill.measure import linear_probe_accuracy, parameter_count, retrieval_recall, size_on_disk
from distill.methods.clip import LearnedScaleContrastive
from distill.models import build_model
from distill.models.clip import ZeroShotClassifier, embed_images, load_hf_clip, load_text_tower
from distill.models.shrink import student_from_teacher
from distill.objective import Objective, Term
from distill.recipes import ModelSpec, Recipe, build_objective, validate_recipe
from distill.recipes.load import read_yaml
from distill.runs.cache import make_layout
from distill.runs.classify import gap_closed
from distill.runs.common import RECIPE_FILE, Log, Splits, Task, loader
from distill.runs.store import fit_and_store_teacher, store_lock, stored_teacher, teacher_cache_dir
from distill.taps import Taps
from distill.training import Distiller
from distill.training import checkpoint as ckpt

INITIAL_SCALE = 1 / 0.07  # CLIP's initial logit scale, before the teacher learns its own
ENCODER = "encoder"  # the tap of a ZeroShotClassifier's image embedding


@dataclass
class ClipData(Splits):
    """A CLIP run's splits (rows carry their caption's embedding as ``text``), the raw
    training images with their classes for the linear probe, and the text side."""

    teacher_train: Dataset
    probe_train: Dataset
    num_classes: int
    in_shape: tuple[int, ...]
    text_tower: str
    caption_embeddings: Tensor  # (captions, D)
    prompts: Tensor  # (classes, D): per class, the mean of its prompts' embeddings
    logit_scale: float = INITIAL_SCALE  # the teacher's, once it is known


def text_tower_name(recipe: Recipe) -> str:
    """``data.captions.text_tower``, or an ``hf-clip:`` teacher's own."""
    captions = recipe.data.captions  # type: ignore[union-attr]
    if captions.text_tower is not None:
        return captions.text_tower
    teacher = recipe.teacher.model if recipe.teacher is not None else "(none)"
    if teacher.startswith("hf-clip:"):
        return teacher
    raise RecipeError(
        f"data.captions.text_tower: the teacher {teacher} has no text tower to embed the "
        "captions and zero-shot prompts; name one (hf:all-minilm-l6-v2, hf:<sentence encoder>, "
        "hf-clip:<model>)"
    )


def class_texts(recipe: Recipe, train: Dataset, num_classes: int) -> tuple[list, list]:
    """(class names, descriptions per class) for the captions and prompts."""
    spec, captions = recipe.data, recipe.data.captions  # type: ignore[union-attr]
    names = captions.classes or CLASS_NAMES.get(spec.dataset) or getattr(train, "classes", None)
    if names is None:
        raise RecipeError(
            f"data.captions.classes: give the names of the {num_classes} classes of "
            f"{spec.dataset}, in label order"
        )
    if len(names) != num_classes:
        raise RecipeError(
            f"data.captions.classes has {len(names)} names; the data has {num_classes} classes"
        )
    described = captions.descriptions
    if described is None:
        builtin = spec.dataset == "fashion_mnist" and captions.classes is None
        described = FASHION_MNIST_DESCRIPTIONS if builtin else [[name] for name in names]
    if len(described) != num_classes:
        raise RecipeError(
            f"data.captions.descriptions has {len(described)} lists; give one per class "
            f"({num_classes})"
        )
    return list(names), [list(d) for d in described]


def prepare_data(recipe: Recipe, log: Log = print) -> ClipData:
    spec, captions = recipe.data, recipe.data.captions  # type: ignore[union-attr]
    train, test, num_classes = load_dataset(
        spec.dataset, spec.path, allow_download=spec.download, image_size=spec.image_size
    )
    names, described = class_texts(recipe, train, num_classes)
    tower_name = text_tower_name(recipe)
    try:
        tower = load_text_tower(tower_name)
    except (ValueError, DistillError) as error:
        raise RecipeError(f"data.captions.text_tower: {error}") from None
    texts, text_classes = class_captions(names, described, captions.templates)
    embedded = tower.embed(texts)
    prompts = class_prompts(tower.embed, names, described, captions.prompts)
    log(
        f"text tower {tower_name}: {len(texts)} captions and the prompts of {num_classes} "
        f"classes embedded ({embedded.shape[1]} wide)"
    )
    if recipe.cache is not None:  # ids for the teacher-output cache, unique over both sets
        train, test = WithExampleId(train), WithExampleId(test, offset=len(train))
    teacher_train, val = train_val_split(train, spec.val_fraction, spec.split_seed)
    probe_train = Subset(teacher_train, range(min(captions.probe_examples, len(teacher_train))))

    def captioned(rows: Dataset) -> CaptionedImages:
        return CaptionedImages(rows, embedded, text_classes, seed=spec.split_seed)

    teacher_train, val = captioned(teacher_train), captioned(val)
    if spec.labeled is None:
        student_train = baseline_train = teacher_train
        regime = f"every one of {len(teacher_train):,} training images has a caption"
    else:
        baseline, val_rows, transfer = labeled_split(
            train, spec.labeled, spec.val_fraction, spec.split_seed
        )
        baseline_train, val, student_train = map(captioned, (baseline, val_rows, transfer))
        regime = (
            f"{spec.labeled:,} captioned images ({len(baseline_train):,} train + {len(val):,} "
            f"validation); the distilled student also learns from the teacher on "
            f"{len(student_train):,} training images (a transfer set: the others' texts come "
            "from the caption pool)"
        )
    if spec.augment:
        teacher_train, student_train, baseline_train = map(
            Augmented, (teacher_train, student_train, baseline_train)
        )
    return ClipData(
        student_train=student_train,
        baseline_train=baseline_train,
        val=val,
        test=captioned(test),
        regime=regime,
        teacher_train=teacher_train,
        probe_train=probe_train,
        num_classes=num_classes,
        in_shape=tuple(train[0][0].shape),
        text_tower=tower_name,
        caption_embeddings=embedded,
        prompts=prompts,
    )


def image_encoder(spec: ModelSpec, data: ClipData) -> nn.Module:
    """The image encoder ``spec`` names, giving embeddings as wide as the text tower's."""
    if spec.model.startswith("hf-clip:"):
        try:
            return copy.deepcopy(load_hf_clip(spec.model)[0]).requires_grad_(True)
        except ValueError as error:
            raise RecipeError(str(error)) from None
    width = data.prompts.shape[1]  # a model's head is its projection to the text width
    return build_model(spec.model, width, data.in_shape, spec.args, spec.pretrained)


def clip_model(spec: ModelSpec, data: ClipData, scale: float) -> ZeroShotClassifier:
    """``spec``'s image encoder as a zero-shot classifier; ``checkpoint`` weights, or a CLIP
    run directory's student, loaded (with the prompts and scale it was saved with)."""
    run_dir = Path(spec.model)
    if run_dir.is_dir():
        if not (run_dir / RECIPE_FILE).exists() or not (run_dir / ckpt.STUDENT_FILE).exists():
            raise RecipeError(
                f"model {spec.model}: a directory must be a distill run with {RECIPE_FILE} and "
                f"{ckpt.STUDENT_FILE}"
            )
        earlier = validate_recipe(read_yaml(run_dir / RECIPE_FILE), str(run_dir / RECIPE_FILE))
        if earlier.task != "clip":
            raise RecipeError(f"model {spec.model}: a task {earlier.task} run, not a clip one")
        model = clip_model(earlier.student.model_copy(update={"checkpoint": None}), data, scale)
        ckpt.load_weights(model, run_dir / ckpt.STUDENT_FILE)
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
    if spec.model.startswith("hf-clip:"):
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
        recipe, model, loader(data.teacher_train, recipe, True), loader(data.val, recipe, False),
        progress, log, objective=Objective(clip=Term(contrastive, student=ENCODER)),
        finish=learned_scale,
    )  # fmt: skip
    return model.eval(), info


def get_teacher(recipe: Recipe, data: ClipData, progress: bool, log: Log) -> tuple[nn.Module, dict]:
    spec = recipe.teacher
    assert spec is not None
    if spec.model.startswith("hf-clip:"):
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
        with store_lock(teacher_cache_dir(recipe), log):  # another run may be training it
            stored = stored_teacher(recipe, lambda: clip_model(spec, data, INITIAL_SCALE), log)
            model, info = (
                stored if stored is not None else train_teacher(recipe, data, progress, log)
            )
    data.logit_scale = float(model.logit_scale)
    return model.eval(), {**info, "logit_scale": data.logit_scale}


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


class Clip(Task):
    """``task: clip``."""

    name = "clip"
    diagnosable = True
    exports = True
    cache_example = "cache: {}"

    def prepare(self, recipe: Recipe, progress: bool, log: Log) -> ClipData:
        return prepare_data(recipe, log)

    def teacher(
        self, recipe: Recipe, data: Splits, progress: bool, log: Log
    ) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(data, ClipData)
        return get_teacher(recipe, data, progress, log)

    def train_teacher(self, recipe: Recipe, data: Splits, progress: bool, log: Log) -> dict:
        assert isinstance(data, ClipData) and recipe.teacher is not None
        with store_lock(teacher_cache_dir(recipe), log):
            return train_teacher(recipe, data, progress, log)[1]

    def preflight(self, recipe: Recipe, data: Splits) -> None:
        """The student (and a teacher to build) is built and run on two test images; its
        embedding must be as wide as the text tower's, with the taps the objective reads."""
        assert isinstance(data, ClipData)
        objective = build_objective(clip_terms(recipe, 1.0).objective, 1)
        batch = as_batch(default_collate([data.test[0], data.test[1]]))
        named = [("student", recipe.student, objective.student_taps)]
        teacher = recipe.teacher
        if teacher is not None and not teacher.model.startswith("hf-clip:"):
            named.append(("teacher", teacher, objective.teacher_taps))
        with torch.random.fork_rng():  # no draw from the run's random streams
            for field, spec, taps in named:
                if spec.model == "teacher":
                    continue  # built from the teacher once it is there
                try:
                    model = clip_model(spec.model_copy(update={"pretrained": False}), data, 1.0)
                    Taps(model, taps)  # an unknown path is an error listing the closest
                    with torch.no_grad():
                        model.eval()(*batch.args)
                except (DistillError, TypeError, RuntimeError, OSError, ValueError) as error:
                    raise RecipeError(f"{field}.model {spec.model}: {error}") from None

    def resolve_recipe(self, recipe: Recipe, data: Splits) -> Recipe:
        assert isinstance(data, ClipData)
        return clip_terms(recipe, data.logit_scale)

    def baseline_objective(self, recipe: Recipe, data: Splits) -> Objective:
        """CLIP's contrastive loss at the teacher's scale, on the captioned images alone."""
        assert isinstance(data, ClipData)
        scale = data.logit_scale
        return Objective(contrastive=Term(clip_contrastive, student=ENCODER, logit_scale=scale))

    def build_student(
        self, recipe: Recipe, data: Splits, spec: ModelSpec, teacher: nn.Module | None
    ) -> nn.Module:
        assert isinstance(data, ClipData)
        if spec.model != "teacher":
            return clip_model(spec, data, data.logit_scale)
        assert isinstance(teacher, ZeroShotClassifier)  # the recipe checks it
        keep = spec.args.get("keep", "every_other")
        try:
            encoder = student_from_teacher(teacher.encoder, keep)
        except ValueError as error:
            raise RecipeError(f"student.args.keep: {error}") from None
        return ZeroShotClassifier(encoder, data.prompts, data.logit_scale)

    def load_student(self, run_dir: Path, recipe: Recipe, data: Splits) -> nn.Module:
        assert isinstance(data, ClipData)
        return clip_model(ModelSpec(model=str(run_dir)), data, data.logit_scale)

    def evaluate(
        self, model: nn.Module, recipe: Recipe, data: Splits, judge: Any = None
    ) -> dict[str, Any]:
        """Zero-shot accuracy and KL (``Distiller.evaluate``), then the embeddings' linear
        probe and retrieval recall."""
        assert isinstance(data, ClipData) and isinstance(model, ZeroShotClassifier)
        test = loader(data.test, recipe, False)
        metrics = Distiller(model, judge, progress=False).evaluate(test)
        size = recipe.data.eval_batch_size
        train_x, train_y = embed_images(model.encoder, data.probe_train, size)
        test_x, test_y = embed_images(model.encoder, data.test, size)
        metrics["linear_probe"] = linear_probe_accuracy(train_x, train_y, test_x, test_y)
        caption_of_image = torch.tensor(data.test.choice)  # type: ignore[attr-defined]
        metrics.update(retrieval_recall(test_x, data.caption_embeddings, caption_of_image))
        return metrics

    def describe(
        self, model: nn.Module, recipe: Recipe, data: Splits, weights: Path | None = None
    ) -> dict[str, Any]:
        return {"parameters": parameter_count(model), "size_bytes": size_on_disk(model, weights)}

    def latency_input(self, model: nn.Module, data: Splits) -> tuple[Tensor, dict[str, Any]]:
        return data.test[0][0], {}

    def cache_model(self, teacher: nn.Module) -> nn.Module:
        """The image tower: the cache keeps embeddings, from which the zero-shot logits
        follow (``ZeroShotAnswers``)."""
        assert isinstance(teacher, ZeroShotClassifier)
        return teacher.encoder

    def cached_teacher(self, answers: teachers.Cached, data: Splits) -> teachers.Teacher:
        assert isinstance(data, ClipData)
        return teachers.ZeroShotAnswers(answers, data.prompts, data.logit_scale, ENCODER)

    def cache_rows(self, data: Splits) -> Dataset:
        return ConcatDataset([data.student_train, data.val, data.test])

    def cache_layout(self, recipe: Recipe, data: Splits, teacher: nn.Module, rows: int) -> Layout:
        """The teacher's image embeddings, dense."""
        fingerprint = self.cache_fingerprint(recipe, data)
        return make_layout(recipe, kind="dense", num_examples=rows, fingerprint=fingerprint)

    def cache_fingerprint(self, recipe: Recipe, data: Splits) -> dict[str, Any]:
        assert recipe.teacher is not None and isinstance(data, ClipData)
        return {
            "teacher": recipe.teacher.model,
            "teacher_args": dict(recipe.teacher.args),
            "teacher_checkpoint": str(recipe.teacher.checkpoint or ""),
            "teacher_train": recipe.teacher.model_dump(mode="json")["train"],
            "dataset": recipe.data.dataset,
            "captions": recipe.data.captions.model_dump(mode="json"),  # type: ignore[union-attr]
            "split_seed": recipe.data.split_seed,
            "seed": recipe.seed,
        }

    def summary_fields(
        self, recipe: Recipe, data: Splits, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        assert isinstance(data, ClipData)
        before = {"task": "clip", "dataset": recipe.data.dataset, "text_tower": data.text_tower,
                  "logit_scale": data.logit_scale}  # fmt: skip
        return before, {"gap_closed": gap_closed(models)}

    def evaluate_run(self, run_dir: Path, recipe: Recipe) -> dict[str, float]:
        data = prepare_data(recipe, log=lambda line: None)
        return self.evaluate(self.load_student(run_dir, recipe, data), recipe, data)

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
