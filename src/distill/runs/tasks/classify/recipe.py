"""The recipe of ``task: classification``: images or tabular rows with labels, and what
only a classification run has: teacher assistants, born-again generations, mutual
learning, mixed batches, routed domains and the transfer sets of students without the
training data (``data.synthetic``, ``pate``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from distill.losses.registry import loss_info
from distill.recipes.schema import DataSpec, ModelSpec, Recipe, Strict, check_dense_cache
from distill.recipes.support import refusal
from distill.runs.tasks.private.recipe import PateSpec, SyntheticSpec, check_pate, check_synthetic

LM_ONLY = "language-model caches only; a classifier's cache holds dense logits"
SERVED_OR_TOKENIZER = "for language-model teachers; drop it"


class MixSpec(Strict):
    """Function matching (Beyer et al. 2022): every student's training batches are mixed
    (``data.mixing.BatchMix``), teacher and student reading the same mixed input and
    cross-entropy the mixed labels."""

    kind: Literal["mixup", "cutmix"] = Field(
        description="mixup: λ·x + (1 − λ)·x′ with another row x′; cutmix: a box of x′ pasted "
        "into x, λ = 1 − its share; labels mixed by λ"
    )
    alpha: float = Field(1.0, gt=0, description="λ ~ Beta(alpha, alpha)")
    prob: float = Field(1.0, gt=0, le=1, description="the share of batches mixed")


class ClassificationData(DataSpec):
    """Images or rows with labels, with what a classification run adds: mixed batches, a
    domain per example and a synthetic transfer set."""

    mix: MixSpec | None = Field(
        None, description="mixup or cutmix of every student's training batches (function matching)"
    )
    domains: dict[str, list[int]] | None = Field(
        None,
        description="domain name -> its classes: a coarse field every example carries, also "
        "in the transfer set, that routes it to its specialised teacher",
    )
    synthetic: SyntheticSpec | None = Field(
        None, description="data-free: the student's transfer set is synthesised from the teacher"
    )


class ClassificationRecipe(Recipe):
    """``task: classification``: a classifier student distilled from a classifier teacher,
    measured by accuracy, size and latency."""

    lacks: ClassVar[dict[str, str]] = {
        "cache.top_k": f"a top-k cache is for {LM_ONLY}; drop cache.top_k",
        "cache.encoding: compact": f"the compact encoding is for {LM_ONLY}; drop cache.encoding",
        "cache.hidden_states": f"hidden states are for {LM_ONLY}; drop cache.hidden_states",
        "teacher.model: served": f"a served teacher answers with log-probs, {SERVED_OR_TOKENIZER}",
        "teacher.tokenizer": f"a teacher's own tokenizer is {SERVED_OR_TOKENIZER}",
    }
    example: ClassVar[dict[str, Any]] = {
        "name": "tiny",
        "data": {"dataset": "mnist1d"},
        "teacher": {"model": "zoo:mlp", "args": {"hidden": [32]}, "train": {"epochs": 1}},
        "student": {"model": "zoo:mlp", "args": {"hidden": [8]}},
        "objective": {"ce": {"loss": "cross_entropy"}, "kd": {"loss": "kl"}},
        "train": {"epochs": 1},
        "baseline": False,
    }

    task: Literal["classification"] = Field(
        "classification", description="the kind of run: labelled images or rows"
    )
    data: ClassificationData = Field(description="images or rows with labels, by dataset")
    assistant: ModelSpec | None = Field(
        None,
        description="teacher assistant (TAKD): distilled from the teacher first, then it "
        "teaches the student, with the same objective and budget",
    )
    generations: int = Field(
        1, ge=1, description="born-again networks: generation k+1 distils from generation k"
    )
    peers: int = Field(
        1,
        ge=1,
        description="online mutual learning: this many students trained together (objective "
        "term loss: mutual_learning, student: stack); no teacher needed",
    )
    pate: PateSpec | None = Field(None, description="PATE: noisy votes of partition teachers")

    @model_validator(mode="after")
    def _classification_checks(self) -> ClassificationRecipe:
        check_dense_cache(self)
        self._check_mix()
        check_synthetic(self)
        check_pate(self)
        return self

    def _check_mix(self) -> None:
        """``data.mix`` turns the labels into mixed class probabilities at every step."""
        if self.data.mix is None:
            return
        for name, term in self.objective.items():
            if "labels" in loss_info(term.loss).reads and term.loss != "cross_entropy":
                raise refusal(
                    f"objective.{name}",
                    "data.mix",
                    f"{term.loss} reads class ids, which data.mix turns into mixed class "
                    "probabilities (only cross_entropy reads those); drop data.mix or the term",
                )
