"""Losses for a teacher and a student whose vocabularies differ (another tokenizer).

- ``uld``: compares the two next-token distributions as sorted probability vectors, so it
  needs no correspondence between the vocabularies at all.
- ``shared_vocab_kl``: the exact KL on the tokens both vocabularies share (given as index
  pairs), with everything else in one "other" bucket per model.

Rows (positions) must already be aligned: row r of the student and row r of the teacher
predict the same characters (``methods.cross_tokenizer`` aligns them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _rows(logits: Tensor, mask: Tensor | None) -> Tensor:
    """The selected rows as (rows, vocab), in float32 at least (float64 stays)."""
    logits = logits.reshape(-1, logits.shape[-1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
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
