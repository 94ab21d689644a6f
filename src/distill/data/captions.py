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

import string
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from distill.data.idx import CLASSES
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
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}  # fmt: skip


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
