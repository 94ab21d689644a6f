"""Deep Mutual Learning's loss over several peers' logits (``distill.mutual`` trains them)."""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.logits import cross_entropy, kl


def mutual_learning(
    student_features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Deep Mutual Learning over K peers' logits ``student_features`` of shape (K, N, C).

    Formula: ``Σ_k [ce_weight · CE(z_k, y) + kd_weight · (1 / (K−1)) Σ_{j≠k}
    T² KL(p_j^T ‖ p_k^T)]`` with ``p_j`` detached (each peer is a teacher to the others).
    Summed over peers, so each peer's gradient is that of its own loss.
    Reduction: mean over rows (rows without a label add only the KL part). T² scaling: yes.
    Paper: Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018.
    """
    peers = student_features.shape[0]
    if peers < 2:
        raise ValueError(f"mutual_learning needs (K >= 2, N, C) peer logits, got {peers}")
    total = student_features.new_zeros((), dtype=torch.float32)
    for k in range(peers):
        z_k = student_features[k]
        if ce_weight and labels is not None:
            total = total + ce_weight * cross_entropy(z_k, labels, mask=mask)
        others = [j for j in range(peers) if j != k]
        divergence = sum(
            kl(z_k, student_features[j].detach(), temperature=temperature, mask=mask)
            for j in others
        )
        total = total + kd_weight * divergence / len(others)
    return total
