"""Divergences against a sparse teacher: its top-k log-probabilities and the tail mass.

A teacher cache for a language model keeps, per token, the k most likely token ids, their
log-probabilities ``log q_i`` and the log of the remaining mass ``log r = log(1 − Σ_K q_i)``
(the *tail*), all at the temperature the cache was built with. The student keeps its full
distribution p over the vocabulary.

Tail handling (the documented choice): both distributions are coarsened to the same k + 1
buckets, the k teacher tokens and one bucket for everything else::

    q̄ = (q_1, …, q_k, r)        p̄ = (p_1, …, p_k, 1 − Σ_K p_i)

and the divergence is the dense one between q̄ and p̄. So the student is pulled towards
the teacher's top-k probabilities *and* told how much mass to leave outside them, without
inventing how the teacher spreads its tail. Properties, each tested:

- exact at k = vocabulary size (the tail buckets are empty on both sides);
- for every f-divergence here (KL, reverse KL, JSD, skew KL, TVD) the coarsened value is a
  lower bound of the full one (data-processing inequality), tight as k grows;
- the alternative "renormalise the top-k and drop the tail" (DistillKit's default) lets
  the student put any mass outside the top-k at no cost; we do not use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.logits import DIVERGENCES
from distill.losses.reductions import check_mask, select_rows, upcast
from distill.outputs import TopK

# a log-probability standing for "no mass": exp() of it is 0 in float32, and unlike -inf
# it keeps 0 · (log 0 − log 0) terms at 0 instead of NaN
LOG_ZERO = -1.0e4


def bucket_log_probs(student_logits: Tensor, ids: Tensor, temperature: float) -> Tensor:
    """The student's log-probabilities at ``temperature`` on the teacher's k tokens, plus
    the log of its mass outside them: (rows, k + 1)."""
    log_p = F.log_softmax(upcast(student_logits) / temperature, dim=-1)
    ids = ids.long()
    on_ids = log_p.gather(-1, ids)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([on_ids, tail], dim=-1).clamp_min(LOG_ZERO)


def teacher_buckets(logprobs: Tensor, tail: Tensor) -> Tensor:
    """The teacher's (rows, k + 1) log-probabilities: top-k, then the tail."""
    k = logprobs.shape[-1]
    buckets = [upcast(logprobs).reshape(-1, k), upcast(tail).reshape(-1, 1)]
    return torch.cat(buckets, dim=-1).clamp_min(LOG_ZERO)


def sparse_divergence(
    student_logits: Tensor,
    teacher_topk: TopK,
    *,
    divergence: str = "kl",
    temperature: float = 1.0,
    mask: Tensor | None = None,
    **options: float,
) -> Tensor:
    """A divergence between the student's full distribution and a top-k teacher.

    Formula: ``D_T(q̄ ‖ p̄)`` as the dense ``losses.<divergence>`` on the k + 1 buckets of
    this module's docstring, with ``p = softmax(z_s / T)`` and ``q`` the teacher at T.
    ``divergence``: ``kl`` (Hinton), ``reverse_kl`` (MiniLLM), ``jsd`` (GKD; ``beta``),
    ``skew_kl`` / ``skew_reverse_kl`` (DistiLLM; ``skew``) or ``tvd``.
    Reduction: mean over selected rows (``mask``). T² scaling: yes, except for ``tvd``.
    The teacher's ``temperature`` must be the loss's: a cache stores log-probabilities at
    one temperature, and tempering them again would change the tail in an unknown way.
    Papers: Hinton et al. 2015; top-k logit caching as in DistillKit (Arcee, 2024) and
    Raman et al., "For Distillation, Tokens Are Not All You Need", 2023.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    if abs(teacher_topk.temperature - temperature) > 1e-6:
        raise ValueError(
            f"the sparse teacher holds log-probabilities at temperature "
            f"{teacher_topk.temperature}, the loss asks for {temperature}; set the term's "
            f"temperature to {teacher_topk.temperature} or rebuild the cache at {temperature}"
        )
    check_mask(mask, student_logits.shape[:-1], f"sparse {divergence}")
    if teacher_topk.ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"sparse {divergence}: the teacher's top-k covers rows of shape "
            f"{tuple(teacher_topk.ids.shape[:-1])}, the student's logits "
            f"{tuple(student_logits.shape[:-1])}"
        )
    rows_dims = student_logits.dim() - 1
    logits = select_rows(student_logits, mask, rows_dims)
    target = teacher_topk if mask is None else teacher_topk.select(mask.reshape(-1).bool())
    k = target.ids.shape[-1]
    student = bucket_log_probs(logits, target.ids.reshape(-1, k), temperature)
    teacher = teacher_buckets(target.logprobs, target.tail)
    value = DIVERGENCES[divergence](student, teacher, temperature=1.0, **options)
    return value if divergence == "tvd" else temperature**2 * value


def sparse_kl(
    student_logits: Tensor,
    teacher_topk: TopK,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton KD against a top-k teacher: ``T² · KL(q̄ ‖ p̄)`` on k + 1 buckets (module
    docstring). Reduction: mean over selected rows. T² scaling: yes. Hinton et al., 2015."""
    return sparse_divergence(
        student_logits, teacher_topk, divergence="kl", temperature=temperature, mask=mask
    )
