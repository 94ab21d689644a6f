"""A CLIP run's data: images with the embedding of a caption each (``text``), the
classes' zero-shot prompts, and the splits.

Captions come from templates (each image one of its class's) or, for an image folder,
from each image's own caption (the text file next to it, or a JSONL of
``{"image": path, "caption": text}``). With ``data.labeled`` only that many training
images keep their caption; the others form a transfer set, each with a text from the
caption pool that says nothing about it (for losses that compare with texts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset, Subset

from distill.data import Augmented, WithExampleId, labeled_split, train_val_split
from distill.data.captions import (
    CLASS_NAMES,
    FASHION_MNIST_DESCRIPTIONS,
    CaptionedImages,
    OwnCaptions,
    caption_files,
    class_captions,
    class_prompts,
)
from distill.errors import DataError, DistillError, RecipeError
from distill.models.clip import is_hf_clip, load_text_tower
from distill.recipes import Recipe
from distill.runs.task import Splits
from distill.runs.workdir import Log

INITIAL_SCALE = 1 / 0.07  # CLIP's initial logit scale, before the teacher learns its own


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


def text_tower_name(recipe: Recipe) -> str:
    """``data.captions.text_tower``, or an ``hf-clip:`` teacher's own."""
    captions = recipe.data.captions  # type: ignore[union-attr]
    if captions.text_tower is not None:
        return captions.text_tower
    teacher = recipe.teacher.model if recipe.teacher is not None else "(none)"
    if is_hf_clip(teacher):
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
    train, test, num_classes = spec.load()
    names, described = class_texts(recipe, train, num_classes)
    tower_name = text_tower_name(recipe)
    try:
        tower = load_text_tower(tower_name)
    except (ValueError, DistillError) as error:
        raise RecipeError(f"data.captions.text_tower: {error}") from None
    own = captions.files or captions.jsonl is not None or captions.column is not None
    if own:
        texts, own_train, own_test = own_captions(recipe, train, test)
    else:
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

    def captioned(rows: Dataset, training: bool = True, test_rows: bool = False) -> Dataset:
        if own:  # training rows without their own caption are left out of contrastive terms
            of_rows = own_test if test_rows else own_train
            return OwnCaptions(rows, embedded, of_rows, spec.split_seed, hide_uncaptioned=training)
        return CaptionedImages(rows, embedded, text_classes, seed=spec.split_seed)

    teacher_train = captioned(teacher_train)
    if spec.labeled is None:
        student_train = baseline_train = teacher_train
        val = captioned(val, training=False)
        regime = f"every one of {len(teacher_train):,} training images has a caption"
    else:
        baseline, val_rows, transfer = labeled_split(
            train, spec.labeled, spec.val_fraction, spec.split_seed
        )
        baseline_train, student_train = captioned(baseline), captioned(transfer)
        val = captioned(val_rows, training=False)
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
        test=captioned(test, training=False, test_rows=True),
        regime=regime,
        teacher_train=teacher_train,
        probe_train=probe_train,
        num_classes=num_classes,
        in_shape=tuple(train[0][0].shape),
        text_tower=tower_name,
        caption_embeddings=embedded,
        prompts=prompts,
    )


def own_captions(recipe: Recipe, train: Dataset, test: Dataset) -> tuple[list, list, list]:
    """(distinct captions, caption index of each training image (-1: none), of each test
    image) from the files next to the images, ``data.captions.jsonl`` or the dataset's
    ``data.captions.column``."""
    captions, root = recipe.data.captions, Path(str(recipe.data.path))  # type: ignore[union-attr]
    found, names = {}, {}
    for split, rows in (("train", train), ("test", test)):
        if captions.column is not None:  # an hf_images dataset
            found[split] = rows.texts(captions.column)  # type: ignore[attr-defined]
            names[split] = [
                f"{split} row {i}: this image has no caption (its {captions.column!r} is empty)"
                for i in range(len(rows))
            ]  # type: ignore[arg-type]
        else:
            files = [file for file, _ in rows.samples]  # type: ignore[attr-defined]
            found[split] = caption_files(files, root, captions.jsonl)
            names[split] = [
                f"{f}: this image has no caption ({f.with_suffix('.txt').name} or "
                "a row of data.captions.jsonl)"
                for f in files
            ]
    missing = [name for name, text in zip(names["test"], found["test"], strict=True) if not text]
    if missing:
        raise DataError(
            f"{missing[0]}; image-text recall needs a caption for every test image, and "
            f"{len(missing)} have none"
        )
    if not any(found["train"]):
        raise DataError(f"{recipe.data.path}: no training image has a caption")
    texts = sorted({text for split in found.values() for text in split if text})
    index = {text: i for i, text in enumerate(texts)}
    train_index, test_index = ([index[t] if t else -1 for t in found[s]] for s in ("train", "test"))
    return texts, train_index, test_index
