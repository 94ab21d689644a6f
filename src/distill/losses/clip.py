"""Losses for distilling a CLIP-style image–text teacher into a smaller image encoder.

Inputs are embeddings, normalised here to unit length: ``student_features`` (N, D), the
student image encoder's (projected) embeddings; ``teacher_features`` (N, D), the teacher
image tower's; ``text`` (N, D), the frozen text tower's embeddings of each image's caption
(pair i is image i with text i). ``logit_scale`` is the teacher's learned scale (CLIP's
exp(t), 100 for OpenAI CLIP), so that similarities are the logits the teacher was trained
with. Reduction: mean over the N images (and texts, for the symmetric losses).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.logits import kl
from distill.losses.reductions import check_same_shape, upcast
from distill.outputs import IGNORE_INDEX

__all__ = [
    "clip_affinity",
    "clip_contrastive",
    "clip_embedding",
    "clip_logits",
    "clip_relational",
]


def _unit(x: Tensor) -> Tensor:
    return F.normalize(upcast(x), dim=-1)


def clip_logits(image: Tensor, text: Tensor, logit_scale: float | Tensor) -> Tensor:
    """``logit_scale · cos(image_i, text_j)``: (N_images, N_texts) similarity logits."""
    return logit_scale * _unit(image) @ _unit(text).T


def _check(image: Tensor, text: Tensor, what: str) -> None:
    if image.dim() != 2 or text.dim() != 2 or image.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"{what}: image embeddings {tuple(image.shape)} and text embeddings "
            f"{tuple(text.shape)} must be (N, D) with the same D; give the student a "
            "projection to the teacher's embedding width"
        )


def _symmetric_info_nce(logits: Tensor) -> Tensor:
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def clip_contrastive(
    student_features: Tensor,
    text: Tensor,
    labels: Tensor | None = None,
    *,
    logit_scale: float | Tensor = 100.0,
) -> Tensor:
    """CLIP's contrastive loss: symmetric InfoNCE between images and their captions.

    Formula: with ``S = logit_scale · norm(image) · norm(text)ᵀ`` (N × N),
    ``L = ½ [CE(S, diag) + CE(Sᵀ, diag)]``: each image picks its caption among the batch's,
    each caption its image. ``text`` comes from the teacher's frozen text tower, so this is
    also CLIP-KD's interactive contrastive loss (the student's image embeddings contrasted
    with the teacher's text embeddings; Yang et al., "CLIP-KD", CVPR 2024); without a
    teacher image tower it is the student's own contrastive training.
    Rows whose label is -100 (images without a caption, in a transfer set) are left out;
    a batch without a captioned row gives 0.
    Reduction: mean over images and over texts. T² scaling: no.
    Paper: Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision" (CLIP), ICML 2021.
    """
    _check(student_features, text, "clip_contrastive")
    if labels is not None:
        captioned = labels != IGNORE_INDEX
        if not bool(captioned.any()):
            return student_features.sum() * 0.0
        student_features, text = student_features[captioned], text[captioned]
    return _symmetric_info_nce(clip_logits(student_features, text, logit_scale))


def clip_embedding(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    kind: Literal["cosine", "mse"] = "cosine",
) -> Tensor:
    """Embedding distillation: the student's image embedding matches the teacher's.

    Formula: with unit vectors ``s = norm(f_s)``, ``t = norm(f_t)``:
    ``cosine: 1 − s·t``; ``mse: ‖s − t‖²`` (= 2 − 2 s·t, summed over dimensions).
    Reduction: mean over images. T² scaling: no.
    Paper: Yang et al., "CLIP-KD: An Empirical Study of CLIP Model Distillation", CVPR 2024
    (feature distillation, their best single loss).
    """
    check_same_shape(student_features, teacher_features, "clip_embedding")
    s, t = _unit(student_features), _unit(teacher_features)
    if kind == "cosine":
        return (1.0 - (s * t).sum(-1)).mean()
    if kind == "mse":
        return (s - t).pow(2).sum(-1).mean()
    raise ValueError(f"clip_embedding: kind must be 'cosine' or 'mse', got {kind!r}")


def _soft_cross_entropy(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    return -(F.softmax(teacher_logits, -1) * F.log_softmax(student_logits, -1)).sum(-1).mean()


def clip_relational(
    student_features: Tensor,
    teacher_features: Tensor,
    text: Tensor,
    *,
    logit_scale: float = 100.0,
) -> Tensor:
    """Contrastive relational distillation: image–text similarities match the teacher's.

    The student's image→text and text→image distributions over the batch are pulled to the
    teacher's (open_clip's ``DistillClipLoss``).

    Formula: ``S_s = logit_scale · norm(f_s) · norm(text)ᵀ``, ``S_t`` likewise with the
    teacher's image embeddings;
    ``L = ½ [H(softmax(S_t), softmax(S_s)) + H(softmax(S_tᵀ), softmax(S_sᵀ))]`` with the
    soft cross-entropy ``H(p, q) = −Σ p log q`` row by row (image→text, then text→image).
    It equals the KL between the distributions plus the teacher's entropy, a constant.
    Reduction: mean over rows, then over both directions. T² scaling: no (the logit scale
    is the teacher's).
    Paper: Wu et al., "TinyCLIP", ICCV 2023, and open_clip's distillation loss.
    """
    _check(student_features, text, "clip_relational")
    check_same_shape(student_features, teacher_features, "clip_relational")
    s = clip_logits(student_features, text, logit_scale)
    t = clip_logits(teacher_features, text, logit_scale).detach()
    return 0.5 * (_soft_cross_entropy(t, s) + _soft_cross_entropy(t.T, s.T))


def clip_affinity(
    student_features: Tensor,
    teacher_features: Tensor,
    text: Tensor,
    *,
    logit_scale: float = 100.0,
    temperature: float = 1.0,
) -> Tensor:
    """TinyCLIP's affinity mimicking: KL from the teacher's image–text affinities.

    The image→text and text→image affinities at a temperature, summed over both directions.

    Formula: ``A = softmax(logit_scale · norm(image) · norm(text)ᵀ / T)`` row by row;
    ``L = T² [KL(A_t ‖ A_s) + KL(A_tᵀ ‖ A_sᵀ)]`` (the transposes: text→image).
    With the student scored against the same frozen text embeddings as the teacher, this
    is ``clip_relational`` at temperature T, summed instead of averaged, minus the
    teacher's entropy (same gradients at T = 1, up to the factor 2).
    Reduction: mean over rows of each direction, summed over the two. T² scaling: yes.
    Paper: Wu et al., "TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight
    Inheritance", ICCV 2023.
    """
    _check(student_features, text, "clip_affinity")
    check_same_shape(student_features, teacher_features, "clip_affinity")
    s = clip_logits(student_features, text, logit_scale)
    t = clip_logits(teacher_features, text, logit_scale).detach()
    return kl(s, t, temperature=temperature) + kl(s.T, t.T, temperature=temperature)
