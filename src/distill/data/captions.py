"""Image–caption data for CLIP-style distillation.

A classification dataset becomes image–caption pairs through caption templates: each
class has a few descriptions, each template writes a caption from a class name and a
description (``"a photo of a {name}, {description}"``), and each image gets one of its
class's captions (fixed per image, so a teacher cache stays valid). ``CaptionedImages``
yields ``(image, label, {"text": caption embedding})``: the frozen text tower embeds the
captions once, and losses read ``text`` from the batch. Zero-shot prompts use other
templates (``class_prompts``): a student is scored on wordings it never trained on.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from distill.data.idx import CLASSES
from distill.errors import DataError
from distill.outputs import IGNORE_INDEX

# two descriptions per Fashion-MNIST class, in the order of data.idx.CLASSES
FASHION_MNIST_DESCRIPTIONS = [
    ["a short-sleeved cotton top", "a casual tee for summer"],
    ["long pants with two legs", "a pair of slacks"],
    ["a long-sleeved knitted sweater", "a warm jumper"],
    ["a one-piece garment with a skirt", "a light summer frock"],
    ["a long outer jacket with buttons", "a heavy overcoat for winter"],
    ["an open shoe with thin straps", "summer footwear that shows the toes"],
    ["a buttoned shirt with a collar", "a formal blouse"],
    ["a low athletic shoe with laces", "a running trainer"],
    ["a handbag with a handle", "a leather purse to carry things"],
    ["a short boot that covers the ankle", "a heeled bootie"],
]
CAPTION_TEMPLATES = [
    "a photo of a {name}, {description}",
    "a grayscale picture of {description}",
    "{description}",
    "a small product image: {description}, a {name}",
]
PROMPT_TEMPLATES = ["a photo of a {name}.", "a picture of a {name}, {description}."]
# the class names of the datasets a recipe names (an image folder's are its folder names)
CLASS_NAMES = {
    "fashion_mnist": CLASSES,
    "mnist1d": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
}


def check_template(template: str) -> str | None:
    """What is wrong with a caption template (None: nothing): only ``{name}`` and
    ``{description}`` may be filled in."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as error:
        return f"not a template ({error}); write literal braces as {{{{ and }}}}"
    unknown = sorted(set(fields) - {"name", "description"})
    if unknown:
        return f"unknown field(s) {unknown}; a template may use {{name}} and {{description}}"
    return None


def class_captions(
    names: Sequence[str], descriptions: Sequence[Sequence[str]], templates: Sequence[str]
) -> tuple[list[str], list[int]]:
    """Every caption the templates write for every class, and the class of each."""
    if len(names) != len(descriptions):
        raise ValueError(f"{len(names)} class names but {len(descriptions)} description lists")
    captions, classes = [], []
    for label, (name, described) in enumerate(zip(names, descriptions, strict=True)):
        seen: set[str] = set()  # a template without {description} writes one caption
        for template in templates:
            for description in described or [name]:
                caption = template.format(name=name.lower(), description=description)
                if caption not in seen:
                    seen.add(caption)
                    captions.append(caption)
                    classes.append(label)
    return captions, classes


def class_prompts(
    embed: Callable[[list[str]], Tensor],
    names: Sequence[str],
    descriptions: Sequence[Sequence[str]],
    templates: Sequence[str] = PROMPT_TEMPLATES,
) -> Tensor:
    """Zero-shot prompts: per class, the mean of its prompts' unit embeddings (C, D)."""
    captions, classes = class_captions(names, descriptions, templates)
    embedded = torch.nn.functional.normalize(embed(captions), dim=-1)
    labels = torch.tensor(classes)
    return torch.stack([embedded[labels == c].mean(0) for c in range(len(names))])


class CaptionedImages(Dataset):
    """``(image, label, {"text": embedding})`` for each item of a classification dataset
    (its own metadata kept): image i gets the caption ``choice[i]``, drawn (with ``seed``)
    among its class's, or among all captions when the image has no label (-100, a transfer
    set's unlabelled row) or ``paired=False``: a text from the pool that says nothing about
    the image, for losses that only need texts to compare with (relational distillation);
    ``clip_contrastive`` leaves such rows out by their label."""

    def __init__(
        self,
        images: Dataset,
        caption_embeddings: Tensor,
        caption_classes: Sequence[int],
        seed: int = 0,
        paired: bool = True,
    ) -> None:
        self.images, self.embeddings = images, caption_embeddings.float()
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(caption_classes):
            by_class.setdefault(int(label), []).append(index)
        g = torch.Generator().manual_seed(seed)
        self.choice = []
        everything = list(range(len(caption_classes)))
        for i in range(len(images)):  # type: ignore[arg-type]
            label = int(images[i][1]) if paired else IGNORE_INDEX
            options = everything if label == IGNORE_INDEX else by_class.get(label)
            if not options:
                raise ValueError(f"class {label} has no caption; give every class a description")
            self.choice.append(options[int(torch.randint(len(options), (1,), generator=g))])

    def __len__(self) -> int:
        return len(self.choice)

    def __getitem__(self, index: int) -> tuple[Any, Any, dict[str, Any]]:
        image, label, *meta = self.images[index]
        return (
            image,
            label,
            {**(meta[0] if meta else {}), "text": self.embeddings[self.choice[index]]},
        )


def caption_files(
    images: Sequence[Path], root: Path, jsonl: Path | None = None
) -> list[str | None]:
    """Each image's own caption: the row of ``jsonl`` that names it (``{"image": path, "caption":
    text}``, the path relative to ``root`` or absolute), else the text file next to it
    (``cat/001.png`` → ``cat/001.txt``); None where there is neither."""
    given: dict[Path, str] = {}
    if jsonl is not None:
        for number, line in enumerate(Path(jsonl).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path, text = Path(row["image"]), str(row["caption"])
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(
                    f'{jsonl} line {number}: expected {{"image": path, "caption": text}} ({error})'
                ) from None
            given[(path if path.is_absolute() else root / path).resolve()] = text
    found: list[str | None] = []
    for image in images:
        text = given.get(Path(image).resolve())
        sidecar = Path(image).with_suffix(".txt")
        if text is None and sidecar.exists():
            text = sidecar.read_text().strip()
        found.append(text or None)
    return found


def source_rows(dataset: Dataset) -> list[int]:
    """The row of the underlying dataset behind each row of ``dataset`` (through subsets
    and wrappers that keep rows, such as a transfer set's ``WithoutLabels``)."""
    if isinstance(dataset, Subset):
        inner = source_rows(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    inner_dataset = getattr(dataset, "dataset", None)
    if isinstance(inner_dataset, Dataset) and len(inner_dataset) == len(dataset):  # type: ignore[arg-type]
        return source_rows(inner_dataset)
    return list(range(len(dataset)))  # type: ignore[arg-type]


class OwnCaptions(Dataset):
    """``(image, label, {"text": embedding})`` where each image has its own caption:
    ``captions[i]`` indexes ``embeddings`` for row i of the underlying dataset (-1: none;
    ``source_rows`` maps ``images``' rows to it). An image without a caption, or without a
    label (a transfer set's row), gets a text from the pool (drawn with ``seed``) and, with
    ``hide_uncaptioned`` (training rows), label -100, so contrastive losses leave it out."""

    def __init__(
        self,
        images: Dataset,
        embeddings: Tensor,
        captions: Sequence[int],
        seed: int = 0,
        hide_uncaptioned: bool = False,
    ) -> None:
        self.images, self.embeddings = images, embeddings.float()
        self.hide_uncaptioned = hide_uncaptioned
        g = torch.Generator().manual_seed(seed)
        pool = torch.randint(len(embeddings), (len(images),), generator=g).tolist()  # type: ignore[arg-type]
        self.own = [int(captions[row]) for row in source_rows(images)]
        self.pool = pool
        # the caption of each row that has one, a pool text for the others
        self.choice = [c if c >= 0 else p for c, p in zip(self.own, pool, strict=True)]

    def __len__(self) -> int:
        return len(self.choice)

    def __getitem__(self, index: int) -> tuple[Any, Any, dict[str, Any]]:
        image, label, *meta = self.images[index]
        captioned = self.own[index] >= 0 and int(label) != IGNORE_INDEX
        if not captioned and self.hide_uncaptioned:
            label = IGNORE_INDEX
        text = self.embeddings[self.own[index] if captioned else self.pool[index]]
        return image, label, {**(meta[0] if meta else {}), "text": text}
