"""Token-level KD terms: ``losses.lm_head_kd`` (or, against a top-k teacher cache,
``lm_head_sparse_kd``) wired to two models' LM heads.

A term taps the final hidden states of the student (and of a live teacher) and reads the
heads' weights at every step, so the engine computes neither model's (tokens × vocabulary)
logits; with ``ce_weight`` > 0 the label cross-entropy runs in the same chunked pass.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from distill.batch import takes_argument
from distill.losses.tokens import lm_head_kd, lm_head_sparse_kd
from distill.objective import Term
from distill.outputs import TopK
from distill.schedules import Schedule


def final_hidden_tap(model: nn.Module, head: str = "lm_head") -> str:
    """The tap that sees a model's final hidden states for every token: the input of
    ``head``, or, for a Hugging Face causal LM (which may run its head on the last position
    only, ``logits_to_keep``), the output of its base model, which feeds the head as is."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and takes_argument(type(model), "logits_to_keep") and hasattr(model, prefix):
        return prefix
    return f"{head}:input"


def token_kd_term(
    student: nn.Module,
    teacher: nn.Module,
    *,
    weight: float | Schedule = 1.0,
    temperature: float | Schedule = 1.0,
    head: str = "lm_head",
    ce_weight: float = 0.0,
    **options: Any,
) -> Term:
    """An objective ``Term`` that runs ``lm_head_kd`` on two models' LM heads; ``options``
    go to ``lm_head_kd`` (``divergence``, ``beta``, ``skew``, ``vocab_size``, ``softcap``,
    ``chunk_size``). With ``ce_weight`` > 0 only labelled tokens count."""
    student_head = student.get_submodule(head)
    teacher_head = teacher.get_submodule(head)

    def token_kd(
        student_features: Tensor,
        teacher_features: Tensor,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        return lm_head_kd(
            student_features,
            student_head.weight,
            teacher_features,
            teacher_head.weight,
            temperature=temperature,
            labels=labels if ce_weight else None,
            mask=mask,
            ce_weight=ce_weight,
            student_bias=getattr(student_head, "bias", None),
            teacher_bias=getattr(teacher_head, "bias", None),
            **options,
        )

    return Term(
        token_kd,
        weight=weight,
        temperature=temperature,
        student=final_hidden_tap(student, head),
        teacher=final_hidden_tap(teacher, head),
    )


def sparse_token_kd_term(
    student: nn.Module,
    *,
    weight: float | Schedule = 1.0,
    temperature: float | Schedule = 1.0,
    head: str = "lm_head",
    ce_weight: float = 0.0,
    **options: Any,
) -> Term:
    """An objective ``Term`` that runs ``lm_head_sparse_kd`` against a top-k teacher (a
    ``teachers.Cached`` top-k cache) through the student's LM head; ``options`` go to
    ``lm_head_sparse_kd`` (``divergence``, ``beta``, ``skew``, ``vocab_size``, ``softcap``,
    ``chunk_size``)."""
    student_head = student.get_submodule(head)

    def sparse_token_kd(
        student_features: Tensor,
        teacher_topk: TopK,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        return lm_head_sparse_kd(
            student_features,
            student_head.weight,
            teacher_topk,
            temperature=temperature,
            labels=labels if ce_weight else None,
            mask=mask,
            ce_weight=ce_weight,
            student_bias=getattr(student_head, "bias", None),
            **options,
        )

    return Term(
        sparse_token_kd,
        weight=weight,
        temperature=temperature,
        student=final_hidden_tap(student, head),
    )


def lm_head_term(
    student: nn.Module,
    teacher: nn.Module | None,
    *,
    weight: float | Schedule,
    temperature: float | Schedule,
    options: dict[str, Any],
) -> Term:
    """The term of a recipe's LM-head loss: against ``teacher``'s head, or, with
    ``teacher=None``, against a top-k teacher cache. ``options`` may hold ``head`` and
    ``ce_weight``; the rest go to the loss."""
    options = dict(options)
    head = str(options.pop("head", "lm_head"))
    ce_weight = float(options.pop("ce_weight", 0.0))
    if teacher is None:
        return sparse_token_kd_term(
            student,
            weight=weight,
            temperature=temperature,
            head=head,
            ce_weight=ce_weight,
            **options,
        )
    return token_kd_term(
        student,
        teacher,
        weight=weight,
        temperature=temperature,
        head=head,
        ce_weight=ce_weight,
        **options,
    )
