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


class GeneratorSpec(Strict):
    """``data.synthetic.generator``: the generator of ``method: generator`` and the student
    learning alongside it (``methods.generator``); ``data.synthetic.examples`` inputs are
    kept, one round per batch of ``data.synthetic.batch_size``."""

    latent: int = Field(100, ge=1, description="the noise vector's size")
    width: int = Field(32, ge=1, description="the generator's narrowest convolution")
    lr: float = Field(1e-3, gt=0, description="the generator's Adam learning rate")
    conditional: bool = Field(
        True,
        description="draw a class per input and ask the teacher for it (cross-entropy); "
        "false: DAFL's one-hot and information-entropy losses instead",
    )
    bn_weight: float = Field(1.0, ge=0, description="BatchNorm-statistics matching")
    first_bn_multiplier: float = Field(10.0, ge=0, description="extra weight of the first BN")
    entropy_weight: float = Field(5.0, ge=0, description="conditional: false: class balance")
    tv_weight: float = Field(1e-2, ge=0, description="total-variation prior")
    adversarial_weight: float = Field(
        0.1, ge=0, description="the student's disagreement, which the generator maximises"
    )
    disagreement: Literal["l1", "kl"] = Field("l1", description="l1 on logits (DFAD) or kl (ZSKT)")
    jitter: int = Field(2, ge=0, description="random shift (pixels) before the teacher")
    flip: bool = Field(True, description="random horizontal flip before the teacher (images)")
    rounds_per_batch: int = Field(
        1, ge=1, description="generator rounds per kept batch (the others train, unkept)"
    )
    student_steps: int = Field(20, ge=1, description="student KD steps per round (memory bank)")
    student_lr: float = Field(2e-3, gt=0, description="the alongside student's Adam rate")
    temperature: float = Field(1.0, gt=0, description="the alongside student's KD temperature")
    warm_start: bool = Field(
        True,
        description="the distilled student starts from the student that learned alongside "
        "the generator (false: a fresh one, on the kept inputs only)",
    )


INVERSION_FIELDS = ("steps", "lr", "bn_weight", "first_bn_multiplier", "tv_weight", "l2_weight")


class SyntheticSpec(Strict):
    """``data.synthetic``: the distilled student's transfer set is synthesised from the
    teacher, made once and kept in the cache: by inverting it (``deep_inversion``, Yin et
    al. 2020), or by a generator trained against it and a student alongside
    (``generator``: DAFL, ZSKT/DFAD, CMI's memory bank)."""

    method: Literal["deep_inversion", "generator"] = Field(
        "deep_inversion", description="how inputs are made"
    )
    generator: GeneratorSpec | None = Field(
        None, description="method: generator: its settings (defaults when absent)"
    )
    examples: int = Field(4096, ge=1, description="synthetic inputs kept")
    batch_size: int = Field(256, ge=1, description="inputs made together")
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
        if self.method == "generator":
            inversion = [f for f in INVERSION_FIELDS if f in self.model_fields_set]
            if inversion:
                raise ValueError(
                    f"{inversion[0]} is DeepInversion's; method: generator takes its settings "
                    "under generator: (e.g. generator.lr, generator.tv_weight)"
                )
            if self.generator is None:
                self.generator = GeneratorSpec()
        elif self.generator is not None:
            raise ValueError("generator: is for method: generator; drop it or set the method")
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
    unanswered: Literal["ignore", "mean_teacher"] = Field(
        "ignore",
        description="the public inputs without an answer: ignored, or learned from the "
        "student's own moving average (Mean Teacher, Tarvainen & Valpola 2017): the "
        "objective's terms that read a teacher read that average, on every public row",
    )
    ema_momentum: float = Field(
        0.99, ge=0, le=1, description="unanswered: mean_teacher: the average's momentum"
    )

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
    reading = [
        name for name, term in recipe.objective.items() if loss_info(term.loss).reads_teacher
    ]
    if recipe.pate.unanswered == "mean_teacher":
        if not reading:
            raise ValueError(
                "pate.unanswered: mean_teacher: no objective term reads the mean teacher; add "
                "one, e.g. consistency: {loss: kl, weight: 1.0}"
            )
    elif reading:
        raise refusal(
            f"objective.{reading[0]}",
            "pate",
            "the student learns only the answered labels (the teachers' outputs are "
            "private); use {loss: cross_entropy}, or set pate.unanswered: mean_teacher so "
            "that the term reads the student's own moving average",
        )
    for field, train in (("teacher.train", teacher.train), ("train", recipe.train)):
        if train.select_metric is not None:
            raise refusal(
                f"{field}.select_metric",
                "pate",
                "the validation labels are private data that the reported ε does not cover; "
                f"set {field}.select_metric: null (the last step)",
            )
