"""Losses for a teacher and a student whose vocabularies differ (another tokenizer).

- ``uld``: compares the two next-token distributions as sorted probability vectors, so it
  needs no correspondence between the vocabularies at all.
- ``shared_vocab_kl``: the exact KL on the tokens both vocabularies share (given as index
  pairs), with everything else in one "other" bucket per model.

Rows (positions) must already be aligned: row r of the student and row r of the teacher
predict the same characters (``methods.cross_tokenizer`` aligns them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """Student token positions and teacher token positions covering the same characters."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]

    @property
    def one_to_one(self) -> bool:
        return len(self.student) == 1 and len(self.teacher) == 1


def _rows(logits: Tensor, mask: Tensor | None) -> Tensor:
    """The selected rows as (rows, vocab), in float32 at least (float64 stays)."""
    logits = _wide(logits.reshape(-1, logits.shape[-1]))
    return logits if mask is None else logits[mask.reshape(-1).bool()]


def uld(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Universal Logit Distillation: the distance between the sorted probability vectors.

    Formula: ``Σ_i |p̃_s,i − p̃_t,i|`` with ``p̃ = sort↓(softmax(z / T))``, the shorter
    vocabulary padded with zeros to the longer one's size (the closed form of the
    Wasserstein-1 distance the paper uses when both supports are ranked). The two
    vocabularies may differ in size; no token correspondence is used.
    Reduction: mean over selected rows (``mask``: the rows that count). T² scaling: no.
    Paper: Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit
    Distillation Loss for LLMs", TMLR 2025 (arXiv 2402.12030, 2024).
    """
    p_s = F.softmax(_rows(student_logits, mask) / temperature, dim=-1)
    p_t = F.softmax(_rows(teacher_logits, mask) / temperature, dim=-1)
    return sorted_l1(p_s, p_t).mean() if len(p_s) else p_s.sum() * 0.0


def sorted_l1(p_s: Tensor, p_t: Tensor) -> Tensor:
    """Per row, ``Σ_i |sort↓(p_s)_i − sort↓(p_t)_i|``, the shorter padded with zeros; rows
    need not sum to one (merged spans, ``methods.cross_tokenizer``)."""
    size = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, size - p_s.shape[-1])).sort(dim=-1, descending=True).values
    p_t = F.pad(p_t, (0, size - p_t.shape[-1])).sort(dim=-1, descending=True).values
    return (p_s - p_t.to(p_s.dtype)).abs().sum(dim=-1)


def shared_vocab_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_ids: Tensor,
    teacher_ids: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Exact KD on the tokens the two vocabularies share: ``student_ids[j]`` and
    ``teacher_ids[j]`` are the same token string in each.

    Formula: ``T² · KL(p̄_t ‖ p̄_s)`` with ``p̄ = (p[ids], 1 − Σ p[ids])`` at temperature T:
    the shared tokens' probabilities and one bucket for the rest of each vocabulary. With
    the same vocabulary on both sides (ids = all tokens) the bucket is empty and this is the
    ordinary KL (``losses.kl``).
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: the exact-match part of cross-tokenizer KD as in TRL's GOLD trainer (Patiño
    et al., 2025); Hinton et al. 2015 for the KL.
    """
    log_p_s = F.log_softmax(_rows(student_logits, mask) / temperature, dim=-1)
    log_p_t = F.log_softmax(_rows(teacher_logits, mask) / temperature, dim=-1)
    bucket_s = _with_rest(log_p_s[:, student_ids.to(log_p_s.device)])
    bucket_t = _with_rest(log_p_t[:, teacher_ids.to(log_p_t.device)])
    p_t = bucket_t.exp()
    terms = torch.where(p_t > 0, p_t * (bucket_t - bucket_s), torch.zeros_like(p_t))
    rows = terms.sum(dim=-1)
    return temperature**2 * rows.mean() if len(rows) else log_p_s.sum() * 0.0


def _with_rest(log_shared: Tensor) -> Tensor:
    """Append the log of the mass left over, log(1 − Σ exp(log_shared)), per row (floored
    at the dtype's smallest normal number, so an empty bucket is finite)."""
    rest = 1 - log_shared.exp().sum(dim=-1, keepdim=True)
    return torch.cat([log_shared, rest.clamp_min(torch.finfo(rest.dtype).tiny).log()], dim=-1)


def _usable(groups: Sequence[Group]) -> list[Group]:
    """The groups both models predict: non-empty on both sides, not at position 0."""
    return [g for g in groups if g.student and g.teacher and min(g.student[0], g.teacher[0])]


def _wide(logits: Tensor) -> Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _merged(log_probs: Tensor, tokens: Tensor, positions: tuple[int, ...]) -> Tensor:
    """The distribution at the row predicting ``positions[0]``, its first token's entry
    replaced by the probability of the whole token sequence of ``positions``."""
    first = positions[0]
    row = log_probs[first - 1].exp()
    joint = sum(log_probs[k - 1, tokens[k]] for k in positions)
    return row.index_put((tokens[first],), joint.exp())  # type: ignore[union-attr]


def hybrid_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_tokens: Tensor,
    teacher_tokens: Tensor,
    groups: Sequence[Group],
    vocabulary: tuple[Tensor, Tensor] | None = None,
    *,
    temperature: float = 1.0,
    mode: Literal["hybrid", "uld"] = "hybrid",
) -> Tensor:
    """Hybrid cross-tokenizer KD for one sequence: logits (positions, vocab) of each model
    on its own tokens (``*_tokens``: (positions,); row k − 1 predicts token k), aligned by
    ``groups`` (``methods.cross_tokenizer.align_spans``).

    Formula: one-to-one groups: ``shared_vocab_kl`` at their predicting rows (the tokens
    ``vocabulary`` pairs up, needed for ``mode="hybrid"``); every other group (all groups
    with ``mode="uld"``): ``sorted_l1`` of the two *merged* distributions: each model's
    distribution at the row predicting the group's first token, that token's probability
    replaced by the probability of the group's whole token sequence,
    ``exp Σ_j log p(token_j | prefix)`` (the sub-tokens' log-probabilities summed).
    Reduction: mean over the groups with a predicting row in both models (a group at the
    start of a sequence has none). T² scaling: on the KL part.
    Paper: Boizard et al. 2024 (ULD); TRL's GOLD trainer (Patiño et al., 2025) for aligning
    spans and the exact part on shared tokens.
    """
    usable = _usable(groups)
    exact = [g for g in usable if mode == "hybrid" and g.one_to_one]
    ranked = [g for g in usable if not (mode == "hybrid" and g.one_to_one)]
    wide = torch.promote_types(student_logits.dtype, torch.float32)
    total = student_logits.new_zeros((), dtype=wide)
    if exact:
        assert vocabulary is not None, "mode='hybrid' needs the shared vocabulary"
        rows_s = torch.tensor([g.student[0] - 1 for g in exact])
        rows_t = torch.tensor([g.teacher[0] - 1 for g in exact])
        kl = shared_vocab_kl(
            student_logits[rows_s], teacher_logits[rows_t], *vocabulary, temperature=temperature
        )
        total = total + kl * len(exact)
    if ranked:  # the merged spans read every row of the sequence
        log_s = F.log_softmax(_wide(student_logits) / temperature, dim=-1)
        log_t = F.log_softmax(_wide(teacher_logits) / temperature, dim=-1)
        p_s = torch.stack([_merged(log_s, student_tokens, g.student) for g in ranked])
        p_t = torch.stack([_merged(log_t, teacher_tokens, g.teacher) for g in ranked])
        total = total + sorted_l1(p_s, p_t.detach()).sum()
    return total / max(1, len(usable))


@dataclass
class Alignment:
    """How a teacher with another tokenizer lines up with the student, per batch row: the
    groups (``Group``) of the row, the student's and the teacher's tokens they index (row
    k − 1 of each model's logits predicts its token k); ``vocabulary``: the shared
    tokens' id pairs (student ids, teacher ids)."""

    groups: list[list[Group]]
    student_tokens: list[Tensor]
    teacher_tokens: list[Tensor]
    vocabulary: tuple[Tensor, Tensor] | None = None


def cross_tokenizer_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alignment: Alignment,
    *,
    temperature: float = 1.0,
    mode: Literal["hybrid", "uld"] = "hybrid",
) -> Tensor:
    """``hybrid_kd`` over a batch: student logits (B, L, V_s) and teacher logits
    (B, L_t, V_t), each on its own tokens, lined up by ``alignment`` (which
    ``teachers.CrossTokenizer`` hands over with its logits).

    Formula: ``hybrid_kd`` per row, its group terms summed over rows.
    Reduction: mean over all usable groups of the batch. T² scaling: on the KL part.
    Paper: Boizard et al. 2024 (ULD); TRL's GOLD trainer (2025) for the alignment.
    """
    total, groups = student_logits.new_zeros((), dtype=torch.float32), 0
    rows = zip(alignment.groups, alignment.student_tokens, alignment.teacher_tokens, strict=True)
    for row, (row_groups, student_tokens, teacher_tokens) in enumerate(rows):
        usable = _usable(row_groups)
        if not usable:
            continue
        value = hybrid_kd(
            student_logits[row],
            teacher_logits[row],
            student_tokens.to(student_logits.device),
            teacher_tokens.to(teacher_logits.device),
            usable,
            alignment.vocabulary,
            temperature=temperature,
            mode=mode,
        )
        total = total + value * len(usable)
        groups += len(usable)
    return total / max(1, groups)


@torch.no_grad()
def aligned_agreement(
    student_logits: Tensor, teacher_logits: Tensor, alignment: Alignment
) -> tuple[int, int]:
    """(agreements, comparisons): over the one-to-one groups, how often the student's top
    token is the teacher's top token (through the shared vocabulary; a teacher top token
    the student's vocabulary lacks counts as a disagreement)."""
    assert alignment.vocabulary is not None
    to_student = dict(
        zip(alignment.vocabulary[1].tolist(), alignment.vocabulary[0].tolist(), strict=True)
    )
    agree = compared = 0
    for row, groups in enumerate(alignment.groups):
        exact = [g for g in _usable(groups) if g.one_to_one]
        if not exact:
            continue
        student_top = student_logits[row, [g.student[0] - 1 for g in exact]].argmax(-1)
        teacher_top = teacher_logits[row, [g.teacher[0] - 1 for g in exact]].argmax(-1)
        mapped = [to_student.get(int(t), -1) for t in teacher_top]
        agree += sum(int(s) == m for s, m in zip(student_top, mapped, strict=True))
        compared += len(exact)
    return agree, compared
