"""Check 4, data shift: would the student learn from inputs unlike deployment? Two
signals: a classifier that tells transfer from target inputs apart by the teacher's
log-probabilities (its held-out AUC), and how far apart the teacher's predicted classes
and confidences are on the two."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.doctor.checks import Finding


def _auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve by ranks (Mann–Whitney U)."""
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_regression(x: Tensor, y: Tensor, l2: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Weights and bias of an L2-regularised logistic regression (L-BFGS)."""
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y)
        loss = loss + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def domain_classifier_auc(a: Tensor, b: Tensor, folds: int = 2, seed: int = 0) -> float:
    """Held-out AUC of a logistic regression telling ``a`` rows from ``b`` rows
    (``folds``-fold cross-validation, standardised features): 0.5 = indistinguishable."""
    x = torch.cat([a, b]).float()
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    scores = torch.empty(len(x))
    for fold in range(folds):
        test = torch.arange(len(x)) % folds == fold
        mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
        weight, bias = _logistic_regression((x[~test] - mean) / std, y[~test])
        scores[test] = ((x[test] - mean) / std) @ weight + bias
    return _auc(scores, y.bool())


def data_shift_check(
    transfer_logits: Tensor,
    target_logits: Tensor,
    *,
    transfer_features: Tensor | None = None,
    target_features: Tensor | None = None,
    max_auc: float = 0.75,
    max_class_shift: float = 0.2,
) -> Finding:
    """Does the data the student learns from look, to the teacher, like deployment data?

    Compared: the teacher's confidence and predicted-class histograms on the transfer data
    and on the target data, the total-variation distance between the class histograms,
    and the held-out AUC of a logistic regression telling the two apart from the teacher's
    features (its log-probabilities when no features are given). ``problem`` when the AUC
    exceeds ``max_auc`` or the class histograms differ by more than ``max_class_shift``.
    """
    classes = transfer_logits.shape[-1]
    p_transfer, p_target = (
        F.softmax(transfer_logits.float(), -1),
        F.softmax(target_logits.float(), -1),
    )
    hist_transfer = torch.bincount(p_transfer.argmax(-1), minlength=classes).float()
    hist_target = torch.bincount(p_target.argmax(-1), minlength=classes).float()
    hist_transfer, hist_target = (
        hist_transfer / hist_transfer.sum(),
        hist_target / hist_target.sum(),
    )
    class_shift = float(0.5 * (hist_transfer - hist_target).abs().sum())
    features_a = (
        transfer_features if transfer_features is not None else p_transfer.clamp_min(1e-8).log()
    )
    features_b = target_features if target_features is not None else p_target.clamp_min(1e-8).log()
    auc = domain_classifier_auc(features_a.flatten(1), features_b.flatten(1))
    conf_edges = torch.linspace(0, 1, 11)
    measurements = {
        "domain_auc": auc,
        "class_shift_tv": class_shift,
        "transfer_confidence": float(p_transfer.max(-1).values.mean()),
        "target_confidence": float(p_target.max(-1).values.mean()),
        "transfer_classes": hist_transfer.tolist(),
        "target_classes": hist_target.tolist(),
        "transfer_confidence_hist": torch.histc(p_transfer.max(-1).values, 10, 0, 1).tolist(),
        "target_confidence_hist": torch.histc(p_target.max(-1).values, 10, 0, 1).tolist(),
        "confidence_edges": conf_edges.tolist(),
    }
    described = (
        f"a classifier tells transfer from target data apart with AUC {auc:.2f}; the teacher's "
        f"predicted classes differ by {100 * class_shift:.0f}% (total variation); its mean "
        f"confidence is {100 * measurements['transfer_confidence']:.1f}% on transfer vs "
        f"{100 * measurements['target_confidence']:.1f}% on target data"
    )
    if auc > max_auc or class_shift > max_class_shift:
        return Finding(
            "data_shift",
            "problem",
            f"the student would learn from inputs unlike deployment: {described}",
            "draw the transfer set from the deployment distribution (all classes, same "
            "preprocessing), or add target-like unlabelled data",
            measurements,
        )
    return Finding("data_shift", "ok", described, "nothing to do", measurements)
