"""The losses distill knows by name, and what each one reads.

Recipes (``objective.<term>.loss``), the recipe checks, the teacher-output cache, the
``distill losses`` command and the objective's term builders all read this table, so a
new loss is one function in ``losses/``, one test, and one line in ``LOSSES`` below.

What a loss reads comes from its parameter names (the convention every loss follows):
``student_logits``, ``teacher_logits``, ``teacher_topk`` (a sparse teacher), ``labels``,
``mask``, ``student_features``, ``teacher_features``, ``text`` (caption embeddings),
``example_weight`` (a per-example weight the batch carries); any parameter starting with
``teacher_`` means it reads the teacher, and ``student_head`` means it reads the two
models' LM heads rather than logits (``methods.token_kd`` builds its term).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from distill.losses.clip import clip_affinity, clip_contrastive, clip_embedding, clip_relational
from distill.losses.cross_tokenizer import cross_tokenizer_kd, uld
from distill.losses.diffusion import (
    consistency_distillation,
    denoising,
    progressive_distillation,
)
from distill.losses.features import (
    attention_transfer,
    cosine_embedding,
    hint,
    pkt,
    rkd_angle,
    rkd_distance,
)
from distill.losses.logits import (
    DIVERGENCES,
    cross_entropy,
    dist,
    dkd,
    jsd,
    kl,
    logit_standardized_kl,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    tvd,
)
from distill.losses.mutual import mutual_learning
from distill.losses.selfsup import byol, dino
from distill.losses.sparse import sparse_divergence, sparse_kl
from distill.losses.tokens import lm_head_kd, lm_head_sparse_kd

# what an objective term can hand a loss, by parameter name
INPUT_NAMES = (
    "student_logits",
    "teacher_logits",
    "teacher_topk",
    "labels",
    "mask",
    "student_features",
    "teacher_features",
    "text",
    "example_weight",
    "alignment",
)


def loss_parameters(loss: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    """The parameters of a loss function, or of ``forward`` for an ``nn.Module`` loss (one
    with state, like DINO's centre)."""
    return inspect.signature(loss.forward if isinstance(loss, nn.Module) else loss).parameters


def inputs_read(loss: Callable[..., Any]) -> list[str]:
    """Which of ``INPUT_NAMES`` the loss takes, in that order."""
    params = loss_parameters(loss)
    return [name for name in INPUT_NAMES if name in params]


@dataclass(frozen=True)
class LossInfo:
    """A named loss and its capabilities.

    ``sparse_form``: the loss that takes its place against a top-k teacher (a teacher
    cache); ``in_recipes``: whether recipes may name it (a sparse form is chosen for them).
    """

    name: str
    fn: Callable[..., Any]
    sparse_form: str | None = None
    in_recipes: bool = True

    @functools.cached_property
    def parameters(self) -> tuple[str, ...]:
        return tuple(loss_parameters(self.fn))

    @property
    def reads(self) -> list[str]:
        return inputs_read(self.fn)

    @property
    def reads_teacher(self) -> bool:
        return any(name.startswith("teacher_") for name in self.parameters)

    @property
    def lm_heads(self) -> bool:
        """Reads the student's (and teacher's) LM head and hidden states, not logits."""
        return "student_head" in self.parameters

    @property
    def divergence(self) -> bool:
        """A token-level divergence (``lm_head_kd``'s and the cache's ``divergence=``)."""
        return self.name in DIVERGENCES

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]

    def to_json(self) -> dict[str, Any]:
        """What ``distill losses --json`` shows of it."""
        return {
            "summary": self.summary,
            "reads": self.reads,
            "reads_teacher": self.reads_teacher,
            "lm_heads": self.lm_heads,
            "in_recipes": self.in_recipes,
        }


LOSSES: dict[str, LossInfo] = {
    info.name: info
    for info in (
        LossInfo("cross_entropy", cross_entropy),
        LossInfo("kl", kl, sparse_form="sparse_kl"),
        LossInfo("reverse_kl", reverse_kl),
        LossInfo("jsd", jsd),
        LossInfo("skew_kl", skew_kl),
        LossInfo("skew_reverse_kl", skew_reverse_kl),
        LossInfo("tvd", tvd),
        LossInfo("uld", uld),
        LossInfo("cross_tokenizer_kd", cross_tokenizer_kd),
        LossInfo("dkd", dkd),
        LossInfo("dist", dist),
        LossInfo("logit_standardized_kl", logit_standardized_kl),
        LossInfo("hint", hint),
        LossInfo("attention_transfer", attention_transfer),
        LossInfo("cosine_embedding", cosine_embedding),
        LossInfo("rkd_distance", rkd_distance),
        LossInfo("rkd_angle", rkd_angle),
        LossInfo("pkt", pkt),
        LossInfo("mutual_learning", mutual_learning),
        LossInfo("sparse_kl", sparse_kl),
        LossInfo("sparse_divergence", sparse_divergence),
        LossInfo("lm_head_kd", lm_head_kd, sparse_form="lm_head_sparse_kd"),
        LossInfo("lm_head_sparse_kd", lm_head_sparse_kd, in_recipes=False),
        LossInfo("clip_contrastive", clip_contrastive),
        LossInfo("clip_embedding", clip_embedding),
        LossInfo("clip_relational", clip_relational),
        LossInfo("clip_affinity", clip_affinity),
        LossInfo("progressive_distillation", progressive_distillation),
        LossInfo("denoising", denoising),
        LossInfo("consistency_distillation", consistency_distillation),
        LossInfo("dino", dino),
        LossInfo("byol", byol),
    )
}
RECIPE_LOSSES = tuple(sorted(name for name, info in LOSSES.items() if info.in_recipes))


def loss_info(name: str) -> LossInfo:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
