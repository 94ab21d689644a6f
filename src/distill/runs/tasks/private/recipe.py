"""The recipe sections of students trained without the training data: ``data.synthetic``
(a DeepInversion transfer set made from the teacher alone) and ``pate`` (teachers trained
on disjoint partitions of private labelled data answer the student's public queries with
noisy votes, and the answers' privacy cost is accounted), and how they combine with the
rest of a classification recipe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from distill.losses.registry import loss_info
from distill.recipes.schema import Strict
from distill.recipes.support import refusal


class SyntheticSpec(Strict):
    """``data.synthetic``: the distilled student's transfer set is synthesised by inverting
    the teacher (DeepInversion, Yin et al. 2020), made once and kept in the cache."""

    method: Literal["deep_inversion"] = Field("deep_inversion", description="how inputs are made")
    examples: int = Field(4096, ge=1, description="synthetic inputs, targets cycling classes")
    batch_size: int = Field(256, ge=1, description="inputs optimised together")
    steps: int = Field(200, ge=1, description="Adam steps per batch")
    lr: float = Field(0.1, gt=0, description="Adam's learning rate on the inputs")
    bn_weight: float = Field(1.0, ge=0, description="BatchNorm-statistics matching")
    first_bn_multiplier: float = Field(10.0, ge=0, description="extra weight of the first BN")
    tv_weight: float = Field(1e-2, ge=0, description="total-variation prior")
    l2_weight: float = Field(1e-5, ge=0, description="L2 prior on the inputs")
    jitter: int = Field(2, ge=0, description="random shift (pixels) at each step")
    flip: bool = Field(True, description="random horizontal flip at each step (images)")
    input_range: tuple[float, float] | None = Field(
        None,
        description="[low, high]: the inputs' valid range, e.g. pixels 0..1 after the "
        "teacher's normalisation; each step clamps to it (None: unbounded)",
    )
    mixup: bool = Field(
        True,
        description="the student sees each synthetic input mixed with another "
        "(λ ~ U(0, 1)), labelled by the teacher live: more distinct inputs at no extra cost",
    )
    augment: bool = Field(
        True, description="and shifted (random crop, padding 2) and flipped, for images"
    )

    @model_validator(mode="after")
    def _range(self) -> SyntheticSpec:
        if self.input_range is not None and not self.input_range[0] < self.input_range[1]:
            raise ValueError(f"input_range {list(self.input_range)}: give [low, high], low < high")
        return self


class PateSpec(Strict):
    """``pate``: PATE with Confident-GNMax (Papernot et al. 2017, 2018). The training
    split (less validation and ``public``) is the private set, split among ``teachers``
    copies of ``teacher`` trained on their own partition; ``public`` training inputs, labels
    hidden, are the student's pool, of which it asks ``queries``."""

    teachers: int = Field(ge=2, description="disjoint partitions of the private set")
    public: int = Field(ge=1, description="training inputs set aside as the public pool")
    queries: int | None = Field(
        None, ge=1, description="public inputs the student asks about (None: all)"
    )
    sigma: float = Field(gt=0, description="GNMax: Gaussian noise on the vote counts")
    threshold: float | None = Field(
        None,
        ge=0,
        description="Confident-GNMax: answer only when the top count plus N(0, σ₁²) "
        "reaches it (None: answer every query)",
    )
    sigma_threshold: float | None = Field(None, gt=0, description="σ₁ of the threshold check")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the reported (ε, δ)")

    @model_validator(mode="after")
    def _threshold_pair(self) -> PateSpec:
        if (self.threshold is None) != (self.sigma_threshold is None):
            raise ValueError("Confident-GNMax needs both threshold and sigma_threshold, or neither")
        if self.threshold is not None and self.threshold > self.teachers:
            raise ValueError(
                f"threshold {self.threshold:g} exceeds the {self.teachers} teachers' votes"
            )
        if self.queries is not None and self.queries > self.public:
            raise ValueError(f"queries {self.queries} exceeds the public pool of {self.public}")
        return self


def check_synthetic(recipe: Any) -> None:
    """A synthetic transfer set inverts the teacher and has no labels."""
    if recipe.data.synthetic is None:
        return
    if recipe.teacher is None:
        raise ValueError(
            "data.synthetic inverts the teacher of a classification recipe: set teacher"
        )
    for name, term in recipe.objective.items():
        if "labels" in loss_info(term.loss).reads:
            raise refusal(
                f"objective.{name}",
                "data.synthetic",
                f"the synthetic transfer set has no labels, so {term.loss} has nothing to "
                "read; learn from the teacher only",
            )


def check_pate(recipe: Any) -> None:
    """PATE trains a teacher per partition and the student learns only the noisy answers."""
    if recipe.pate is None:
        return
    teacher = recipe.teacher
    if teacher is None or teacher.train is None:
        raise ValueError(
            "pate: set teacher (model, args, train) of a classification recipe: each "
            "partition trains its own copy"
        )
    for name, term in recipe.objective.items():
        if loss_info(term.loss).reads_teacher:
            raise refusal(
                f"objective.{name}",
                "pate",
                "the student learns only the answered labels (the teachers' outputs are "
                "private); use {loss: cross_entropy}",
            )
    for field, train in (("teacher.train", teacher.train), ("train", recipe.train)):
        if train.select_metric is not None:
            raise refusal(
                f"{field}.select_metric",
                "pate",
                "the validation labels are private data that the reported ε does not cover; "
                f"set {field}.select_metric: null (the last step)",
            )
