"""What a data-free generator is trained against: inputs on which the teacher answers like it
does on real data (DAFL, Chen et al., ICCV 2019) and on which the student still disagrees
with it (ZSKT, Micaelli & Storkey, NeurIPS 2019; DFAD, Fang et al. 2019). Like
``losses.inversion``, these score generated inputs, not a student, so they are not
objective terms of a recipe (the registry does not list them)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.logits import kl


def one_hot_loss(teacher_logits: Tensor) -> Tensor:
    """DAFL's one-hot loss (Chen et al. 2019, eq. 3): the teacher should be sure of each
    generated input, as it is of real ones,

        L_oh = (1/n) Σ_i CE(y_T^i, argmax_j y_T^i,j)."""
    return F.cross_entropy(teacher_logits.float(), teacher_logits.argmax(dim=-1))


def activation_loss(features: Tensor) -> Tensor:
    """DAFL's activation loss (eq. 4): real inputs excite the teacher's last features
    strongly, so the generator is rewarded for large activations,

        L_a = −(1/n) Σ_i ‖f_T^i‖₁ / d   (the mean absolute feature, negated)."""
    return -features.float().abs().mean()


def information_entropy_loss(teacher_logits: Tensor) -> Tensor:
    """DAFL's information-entropy loss (eq. 5): the classes balanced over a batch,

        L_ie = −H((1/n) Σ_i softmax(y_T^i)),  H(p) = −Σ_j p_j log p_j,

    lowest (−log C) when the teacher's mean prediction is uniform."""
    mean = teacher_logits.float().softmax(dim=-1).mean(dim=0)
    return (mean * mean.clamp_min(1e-30).log()).sum()


def dafl_loss(
    teacher_logits: Tensor,
    features: Tensor,
    one_hot: float = 1.0,
    activation: float = 0.1,
    entropy: float = 5.0,
) -> Tensor:
    """DAFL's generator objective, L_oh + α L_a + β L_ie, with the paper's weights for
    CIFAR-10 (α = 0.1, β = 5) as defaults."""
    return (
        one_hot * one_hot_loss(teacher_logits)
        + activation * activation_loss(features)
        + entropy * information_entropy_loss(teacher_logits)
    )


def disagreement(student_logits: Tensor, teacher_logits: Tensor, kind: str = "l1") -> Tensor:
    """How much the student disagrees with the teacher on generated inputs, which the
    generator maximises (its loss is the negative) and the student minimises:

    - ``l1`` (DFAD, Fang et al. 2019): (1/(nC)) Σ_i ‖z_T^i − z_S^i‖₁, on logits, which
      keeps gradients alive when the two already agree;
    - ``kl`` (ZSKT, Micaelli & Storkey 2019): (1/n) Σ_i KL(softmax(z_T^i) ‖ softmax(z_S^i))."""
    if kind == "l1":
        return (teacher_logits.float() - student_logits.float()).abs().mean()
    if kind == "kl":
        return kl(student_logits, teacher_logits)  # Hinton's KL at T = 1
    raise ValueError(f"disagreement kind must be l1 or kl, got {kind!r}")


__all__ = [
    "activation_loss",
    "dafl_loss",
    "disagreement",
    "information_entropy_loss",
    "one_hot_loss",
]
