"""Losses on logits: label cross-entropy and divergences between student and teacher.

Every function takes logits of shape (N, C) or (N, T, C) and an optional boolean ``mask``
of shape (N,) or (N, T) that selects the rows (examples or tokens) that count. The result
is the mean of a per-row value over the selected rows (see ``reductions.py``).

Temperature: the divergences soften both distributions, ``p^T = softmax(z / T)``, and the
KL family (``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``, ``dkd``,
``dist``, ``logit_standardized_kl``) multiplies by T² so that gradient magnitudes stay
comparable across temperatures (Hinton et al., 2015). ``tvd`` is bounded in [0, 1] and is
not scaled.

Parameter names matter: an objective term feeds a loss by the names of its parameters
(``student_logits``, ``teacher_logits``, ``labels``, ``mask``, ``temperature``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.reductions import (
    check_mask,
    check_same_shape,
    masked_mean,
    select_rows,
    upcast,
)
from distill.outputs import IGNORE_INDEX

__all__ = [
    "DIVERGENCES",
    "cross_entropy",
    "dist",
    "divergence_by_name",
    "dkd",
    "jsd",
    "kl",
    "logit_standardized_kl",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "tvd",
]


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.log_softmax(upcast(logits) / temperature, dim=-1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-row KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) from log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def _prepare(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, what: str):
    check_same_shape(student_logits, teacher_logits, what)
    check_mask(mask, student_logits.shape[:-1], what)


def _selected(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, what: str
) -> tuple[Tensor, Tensor]:
    """The selected rows of both, as (rows, C): a per-row loss then never computes a softmax
    over rows that do not count (DistilBERT's KL reads the 15% masked tokens only)."""
    _prepare(student_logits, teacher_logits, mask, what)
    if mask is None:
        return student_logits, teacher_logits
    return select_rows(student_logits, mask, mask.dim()), select_rows(
        teacher_logits, mask, mask.dim()
    )


def cross_entropy(
    student_logits: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with the labels, optionally label-smoothed.

    Formula: ``CE = −Σ_c q_c log softmax(z)_c`` with ``q = (1 − ε) onehot(y) + ε / C``
    (Szegedy et al., 2016, for ε > 0). ``labels`` may also be class probabilities
    (N, C), e.g. mixup's or CutMix's mixed labels (``data.mixing``): then ``q`` is
    ``(1 − ε) labels + ε / C`` and a row of zeros has no label.
    Reduction: mean over rows whose label is not ``ignore_index`` (not all zeros) and whose
    mask is true. T² scaling: none (no temperature).
    """
    check_mask(mask, student_logits.shape[:-1], "cross_entropy")
    if labels.is_floating_point() and labels.shape == student_logits.shape:
        counted = labels.sum(-1) > 0
        if mask is not None:
            counted = counted & mask.bool()
        classes = labels.shape[-1]
        target = (1 - label_smoothing) * labels + label_smoothing / classes * counted.unsqueeze(-1)
        log_p = F.log_softmax(upcast(student_logits), dim=-1)
        per_row = -(target * log_p).sum(-1)
        return (per_row * counted).sum() / counted.sum().clamp_min(1)
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"cross_entropy: labels shape {tuple(labels.shape)} must equal the logits' row "
            f"shape {tuple(student_logits.shape[:-1])}"
        )
    counted = labels != ignore_index
    if mask is not None:
        counted = counted & mask.bool()
        labels = labels.masked_fill(~counted, ignore_index)
    # rows left out by their label (or the mask) are ignored, not selected: selecting them
    # would wait for the device to count them
    total = F.cross_entropy(
        upcast(student_logits.reshape(-1, student_logits.shape[-1])),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return total / counted.sum().clamp_min(1)


def kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton knowledge distillation: forward KL from the teacher's soft targets.

    Formula: ``T² · KL(p_t^T ‖ p_s^T) = T² Σ_c p_t,c (log p_t,c − log p_s,c)``.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    student_logits, teacher_logits = _selected(student_logits, teacher_logits, mask, "kl")
    mask = None
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    return temperature**2 * masked_mean(_kl_rows(log_pt, log_ps), mask)


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Reverse KL, mode-seeking: the student is penalised for mass where the teacher has none.

    Formula: ``T² · KL(p_s^T ‖ p_t^T)``.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024.
    """
    student_logits, teacher_logits = _selected(student_logits, teacher_logits, mask, "reverse_kl")
    mask = None
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    return temperature**2 * masked_mean(_kl_rows(log_ps, log_pt), mask)


def _log_mixture(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """log(w·p + (1 − w)·q) computed stably from log-probabilities."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen–Shannon divergence JSD(β) between teacher and student.

    Formula: with ``m = β p_t + (1 − β) p_s``,
    ``JSD(β) = T² [β KL(p_t ‖ m) + (1 − β) KL(p_s ‖ m)]``, 0 < β < 1. At β = 0.5 it is the
    Jensen–Shannon divergence; as β → 0 (1) its gradients behave like forward (reverse) KL,
    so use ``kl`` / ``reverse_kl`` for the end points.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(
            f"jsd: beta must be strictly between 0 and 1, got {beta}; "
            "for beta=0 use losses.kl, for beta=1 use losses.reverse_kl"
        )
    student_logits, teacher_logits = _selected(student_logits, teacher_logits, mask, "jsd")
    mask = None
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    log_m = _log_mixture(log_pt, log_ps, beta)
    per_row = beta * _kl_rows(log_pt, log_m) + (1.0 - beta) * _kl_rows(log_ps, log_m)
    return temperature**2 * masked_mean(per_row, mask)


def _check_skew(skew: float, what: str) -> None:
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"{what}: skew must be in [0, 1), got {skew}")


def skew_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Skew KL: forward KL against a student distribution mixed with the teacher's.

    Formula: ``T² · KL(p_t ‖ α p_t + (1 − α) p_s)`` with α = ``skew`` (0 gives ``kl``).
    Mixing keeps the divergence finite where the student puts no mass.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language
    Models", ICML 2024 (default α = 0.1).
    """
    _check_skew(skew, "skew_kl")
    student_logits, teacher_logits = _selected(student_logits, teacher_logits, mask, "skew_kl")
    mask = None
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    log_mix = log_ps if skew == 0.0 else _log_mixture(log_pt, log_ps, skew)
    return temperature**2 * masked_mean(_kl_rows(log_pt, log_mix), mask)


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Skew reverse KL: reverse KL against a teacher distribution mixed with the student's.

    Formula: ``T² · KL(p_s ‖ (1 − α) p_t + α p_s)`` with α = ``skew`` (0 gives ``reverse_kl``).
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Ko et al., "DistiLLM", ICML 2024.
    """
    _check_skew(skew, "skew_reverse_kl")
    student_logits, teacher_logits = _selected(
        student_logits, teacher_logits, mask, "skew_reverse_kl"
    )
    mask = None
    log_ps = _log_probs(student_logits, temperature)
    log_pt = _log_probs(teacher_logits, temperature)
    log_mix = log_pt if skew == 0.0 else _log_mixture(log_ps, log_pt, skew)
    return temperature**2 * masked_mean(_kl_rows(log_ps, log_mix), mask)


def tvd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Total variation distance between teacher and student distributions.

    Formula: ``TVD = ½ Σ_c |p_t,c^T − p_s,c^T|``, in [0, 1].
    Reduction: mean over selected rows. T² scaling: no (the distance is bounded).
    Paper: Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge
    Distillation", ACL 2023.
    """
    student_logits, teacher_logits = _selected(student_logits, teacher_logits, mask, "tvd")
    mask = None
    ps = _log_probs(student_logits, temperature).exp()
    pt = _log_probs(teacher_logits, temperature).exp()
    return masked_mean(0.5 * (pt - ps).abs().sum(-1), mask)


def _binary_and_non_target(logits: Tensor, target: Tensor, temperature: float):
    """Split softened logits into (log [p_target, 1 − p_target], log p̂ over non-targets)."""
    z = upcast(logits) / temperature
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    is_target = F.one_hot(target, z.shape[-1]).bool()
    z_non_target = z[~is_target].view(z.shape[0], z.shape[-1] - 1)
    log_rest = torch.logsumexp(z_non_target, dim=-1, keepdim=True)
    log_binary = torch.cat([z.gather(-1, target[:, None]), log_rest], dim=-1) - log_norm
    log_non_target = z_non_target - log_rest
    return log_binary, log_non_target


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    tckd_weight: float = 1.0,
    nckd_weight: float = 8.0,
    temperature: float = 4.0,
    ignore_index: int = IGNORE_INDEX,
    mask: Tensor | None = None,
) -> Tensor:
    """Decoupled knowledge distillation: target-class and non-target-class parts of KD.

    Formula: with b = [p_y, 1 − p_y] the binary target/non-target probabilities and p̂ the
    distribution over the non-target classes (target removed, renormalised),
    ``TCKD = KL(b_t ‖ b_s)``, ``NCKD = KL(p̂_t ‖ p̂_s)`` and
    ``DKD = T² (α · TCKD + β · NCKD)`` with α = ``tckd_weight``, β = ``nckd_weight``.
    Classic KD decomposes as ``KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD``.
    The paper warms the DKD weight up linearly over the first 20 epochs: give its term a
    ``schedules.Warmup`` weight. Rows labelled ``ignore_index`` (-100: unlabelled transfer
    data) take the teacher's top class as their target.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (α = 1, β = 8, T = 4
    on CIFAR-100).
    """
    _prepare(student_logits, teacher_logits, mask, "dkd")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"dkd: labels shape {tuple(labels.shape)} must equal the logits' row shape "
            f"{tuple(student_logits.shape[:-1])}"
        )
    classes = student_logits.shape[-1]
    s = select_rows(student_logits, mask, labels.dim()).reshape(-1, classes)
    t = select_rows(teacher_logits, mask, labels.dim()).reshape(-1, classes)
    y = select_rows(labels, mask, labels.dim()).reshape(-1).long()
    y = torch.where(y == ignore_index, t.argmax(-1), y)
    if y.numel() == 0:
        return student_logits.sum() * 0.0
    bin_s, non_s = _binary_and_non_target(s, y, temperature)
    bin_t, non_t = _binary_and_non_target(t, y, temperature)
    per_row = tckd_weight * _kl_rows(bin_t, bin_s) + nckd_weight * _kl_rows(non_t, non_s)
    return temperature**2 * per_row.mean()


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(eps)


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    inter_weight: float = 1.0,
    intra_weight: float = 1.0,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """DIST: match the *relations* of the predictions, not their exact values.

    Formula: with P_s, P_t the (rows × classes) matrices of softened probabilities and
    ρ the Pearson correlation,
    ``inter = 1 − mean_i ρ(P_s[i, :], P_t[i, :])`` (each row's class ranking),
    ``intra = 1 − mean_c ρ(P_s[:, c], P_t[:, c])`` (each class across the batch),
    ``DIST = T² (β · inter + γ · intra)`` with β = ``inter_weight``, γ = ``intra_weight``.
    Reduction: inter is a mean over selected rows; intra is a relation *across* the rows of
    the batch, so it is a batch statistic (accumulation of micro-batches approximates it).
    T² scaling: yes.
    Paper: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
    """
    _prepare(student_logits, teacher_logits, mask, "dist")
    classes = student_logits.shape[-1]
    row_dims = student_logits.dim() - 1
    ps = _log_probs(select_rows(student_logits, mask, row_dims), temperature).exp()
    pt = _log_probs(select_rows(teacher_logits, mask, row_dims), temperature).exp()
    ps, pt = ps.reshape(-1, classes), pt.reshape(-1, classes)
    if ps.shape[0] == 0:
        return student_logits.sum() * 0.0
    inter = 1.0 - _pearson(ps, pt, dim=1).mean()
    intra = 1.0 - _pearson(ps, pt, dim=0).mean() if ps.shape[0] > 1 else ps.new_zeros(())
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


def _standardize(logits: Tensor, eps: float) -> Tensor:
    z = upcast(logits)
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + eps)


def logit_standardized_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    eps: float = 1e-7,
    mask: Tensor | None = None,
) -> Tensor:
    """KD on z-score standardised logits, so the student matches shape, not scale.

    Formula: ``Z(z) = (z − mean(z)) / (std(z) + ε)`` over classes, then
    ``T² · KL(softmax(Z(z_t) / T) ‖ softmax(Z(z_s) / T))``. Invariant to adding a constant
    to or scaling (by a positive factor) either model's logits.
    Reduction: mean over selected rows. T² scaling: yes.
    Paper: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.
    """
    _prepare(student_logits, teacher_logits, mask, "logit_standardized_kl")
    return kl(
        _standardize(student_logits, eps),
        _standardize(teacher_logits, eps),
        temperature=temperature,
        mask=mask,
    )


# the token-level divergences, by the name recipes and ``lm_head_kd(divergence=...)`` use;
# each takes (student_logits, teacher_logits, temperature=, mask=) plus its own option
DIVERGENCES: dict[str, Callable[..., Tensor]] = {
    "kl": kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
}
# the option each divergence takes beyond the temperature
DIVERGENCE_OPTIONS = {"jsd": "beta", "skew_kl": "skew", "skew_reverse_kl": "skew"}


def divergence_by_name(name: str, beta: float = 0.5, skew: float = 0.1) -> Callable[..., Tensor]:
    """The divergence ``name`` with its option bound (``beta`` for ``jsd``, ``skew`` for the
    skew divergences; the others take none)."""
    if name not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {name!r}")
    option = DIVERGENCE_OPTIONS.get(name)
    if option is None:
        return DIVERGENCES[name]
    return functools.partial(DIVERGENCES[name], **{option: beta if option == "beta" else skew})
