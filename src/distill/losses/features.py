"""Losses on intermediate features captured by taps.

Each function takes a student and a teacher feature tensor whose first dimension is the
batch: (N, D) embeddings, (N, T, D) token states, or (N, C, H, W) feature maps. Losses
marked ``requires_same_shape`` need equal shapes; an objective term inserts a learned
projector (``distill.projectors``) when the shapes differ. Relational losses (RKD, PKT)
compare the *geometry* of a batch and accept any widths.

Reduction: mean over examples (or over tokens selected by ``mask`` for (N, T, D) inputs);
relational losses are statistics of the whole batch (see each docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.reductions import check_mask, check_same_shape, masked_mean, select_rows, upcast

__all__ = ["attention_transfer", "cosine_embedding", "hint", "pkt", "rkd_angle", "rkd_distance"]

LossFn = TypeVar("LossFn", bound=Callable[..., Tensor])


def requires_same_shape(fn: LossFn) -> LossFn:
    """Mark a feature loss whose student and teacher tensors must have the same shape."""
    fn.requires_same_shape = True  # type: ignore[attr-defined]
    return fn


def _row_dims(features: Tensor, mask: Tensor | None) -> int:
    return 1 if mask is None else mask.dim()


@requires_same_shape
def hint(
    student_features: Tensor, teacher_features: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """FitNets hint: mean squared error between (projected) student and teacher features.

    Formula: ``hint = mean_rows mean_elements (r(f_s) − f_t)²`` where r is the projector
    (the paper's regressor), created by the objective when the shapes differ.
    Reduction: mean over the elements of each row, then mean over selected rows.
    T² scaling: no.
    Paper: Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """
    check_same_shape(student_features, teacher_features, "hint")
    rows = _row_dims(student_features, mask)
    check_mask(mask, student_features.shape[:rows], "hint")
    diff = (upcast(student_features) - upcast(teacher_features)).pow(2)
    per_row = diff.flatten(rows).mean(-1) if diff.dim() > rows else diff
    return masked_mean(per_row, mask)


def _attention_map(features: Tensor, p: float) -> Tensor:
    return F.normalize(upcast(features).abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer(
    student_features: Tensor, teacher_features: Tensor, *, p: float = 2.0
) -> Tensor:
    """Attention transfer: match the spatial attention maps of two feature maps.

    Formula: ``a(F) = vec(mean_c |F_c|^p) / ‖vec(mean_c |F_c|^p)‖₂`` and
    ``AT = mean_i mean_positions (a(F_s,i) − a(F_t,i))²``. Channel counts may differ; when
    the spatial sizes differ, the larger map is average-pooled to the smaller. Unchanged
    when a feature map is multiplied by a positive constant.
    Reduction: mean over positions, then over examples (the convention of the CRD and
    mdistiller benchmarks, whose weight β = 1000 assumes it). T² scaling: no.
    Paper: Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.
    """
    if student_features.dim() != 4 or teacher_features.dim() != 4:
        raise ValueError(
            "attention_transfer needs (N, C, H, W) feature maps, got student "
            f"{tuple(student_features.shape)} and teacher {tuple(teacher_features.shape)}"
        )
    if student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError("attention_transfer: student and teacher batch sizes differ")
    s_hw, t_hw = student_features.shape[-2:], teacher_features.shape[-2:]
    if s_hw != t_hw:
        size = (min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1]))
        student_features = F.adaptive_avg_pool2d(student_features, size)
        teacher_features = F.adaptive_avg_pool2d(teacher_features, size)
    diff = _attention_map(student_features, p) - _attention_map(teacher_features, p)
    return diff.pow(2).mean()


@requires_same_shape
def cosine_embedding(
    student_features: Tensor, teacher_features: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """Cosine embedding loss: align the directions of student and teacher hidden states.

    Formula: ``1 − cos(h_s, h_t)`` over the last dimension, for every row (token or example).
    Reduction: mean over selected rows. T² scaling: no.
    Paper: Sanh et al., "DistilBERT, a distilled version of BERT", 2019 (the L_cos term).
    """
    check_same_shape(student_features, teacher_features, "cosine_embedding")
    check_mask(mask, student_features.shape[:-1], "cosine_embedding")
    cos = F.cosine_similarity(upcast(student_features), upcast(teacher_features), dim=-1)
    return masked_mean(1.0 - cos, mask)


def _embeddings(features: Tensor, mask: Tensor | None) -> Tensor:
    """Rows of a batch as flat vectors: (N, ...) -> (N, D), or the masked tokens (M, D)."""
    if mask is None:
        return upcast(features).flatten(1)
    return upcast(select_rows(features, mask, mask.dim())).flatten(1)


def _normalized_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    d = torch.cdist(x, x)
    off_diagonal = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d / (d[off_diagonal].mean() + eps)


def rkd_distance(
    student_features: Tensor, teacher_features: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """Relational KD, distance-wise: match normalised pairwise distances within the batch.

    Formula: ``ψ(i, j) = ‖x_i − x_j‖₂ / μ`` with μ the mean distance over pairs i ≠ j, and
    ``RKD-D = mean_{i,j} Huber(ψ_s(i, j) − ψ_t(i, j))`` (smooth L1, δ = 1). Embedding
    widths may differ; unchanged when either embedding is scaled.
    Reduction: mean over all pairs of the batch (a batch statistic). T² scaling: no.
    Paper: Park et al., "Relational Knowledge Distillation", CVPR 2019 (weight 25).
    """
    s, t = _embeddings(student_features, mask), _embeddings(teacher_features, mask)
    if s.shape[0] < 2:
        return s.sum() * 0.0
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def _angles(x: Tensor) -> Tensor:
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2)).flatten()


def rkd_angle(
    student_features: Tensor, teacher_features: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    """Relational KD, angle-wise: match the angles formed by triplets in the batch.

    Formula: ``ψ(i, j, k) = ⟨e_ij, e_kj⟩`` with ``e_ij = (x_i − x_j) / ‖x_i − x_j‖₂``, and
    ``RKD-A = mean_{i,j,k} Huber(ψ_s − ψ_t)``. Unchanged by scaling either embedding.
    Reduction: mean over all triplets of the batch (a batch statistic; O(N³) memory).
    T² scaling: no.
    Paper: Park et al., "Relational Knowledge Distillation", CVPR 2019 (weight 50).
    """
    s, t = _embeddings(student_features, mask), _embeddings(teacher_features, mask)
    if s.shape[0] < 3:
        return s.sum() * 0.0
    return F.smooth_l1_loss(_angles(s), _angles(t))


def _cosine_kernel_probabilities(x: Tensor, eps: float) -> Tensor:
    x = F.normalize(x, p=2, dim=1, eps=eps)
    similarity = (x @ x.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    eps: float = 1e-7,
    mask: Tensor | None = None,
) -> Tensor:
    """Probabilistic knowledge transfer: match the batch's conditional similarity densities.

    Formula: with the cosine kernel ``K(a, b) = (cos(a, b) + 1) / 2`` and
    ``P_{j|i} = K(x_i, x_j) / Σ_k K(x_i, x_k)``,
    ``PKT = mean_i Σ_j P^t_{j|i} log((P^t_{j|i} + ε) / (P^s_{j|i} + ε))``. Widths may differ.
    Reduction: sum over j, mean over rows i of the batch. T² scaling: no.
    Paper: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV 2018.
    """
    s, t = _embeddings(student_features, mask), _embeddings(teacher_features, mask)
    if s.shape[0] == 0:
        return s.sum() * 0.0
    ps = _cosine_kernel_probabilities(s, eps)
    pt = _cosine_kernel_probabilities(t, eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(1).mean()
