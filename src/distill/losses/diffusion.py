"""The arithmetic of distilling a diffusion sampler, as pure functions on tensors.

Variance-preserving diffusion: ``z_t = α_t x + σ_t ε`` with ``α_t² + σ_t² = 1``. A network
predicts ``v = α_t ε − σ_t x`` (Salimans & Ho's v-parameterisation), from which
``x̂ = α_t z_t − σ_t v̂`` and ``ε̂ = σ_t z_t + α_t v̂``; an ε-prediction converts by
``x̂ = (z_t − σ_t ε̂) / α_t``. ``alpha`` and ``sigma`` are per-example (N,) tensors,
broadcast over the image dimensions.

- ``ddim_step``: the deterministic DDIM update from ``t`` to ``s``.
- ``progressive_target``: the clean image a one-step student must predict so that its one
  DDIM step lands where the teacher's two steps landed (Salimans & Ho, 2022, Algorithm 2).
- ``progressive_distillation``: the student's loss against that target, in v-space, with
  the paper's truncated-SNR weighting (``truncated_snr_weight``); ``denoising``: the
  diffusion model's own training loss against the true v; ``consistency_distillation``:
  a consistency model's distance to its target, L2 or pseudo-Huber.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.reductions import upcast

__all__ = [
    "consistency_distillation",
    "ddim_step",
    "denoising",
    "per_image",
    "progressive_distillation",
    "progressive_target",
    "truncated_snr_weight",
    "v_from_x",
    "x_from_v",
]


def per_image(scale: Tensor, like: Tensor) -> Tensor:
    """(N,) → (N, 1, 1, …) to broadcast over an image batch."""
    return scale.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def x_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``x̂ = α z − σ v``."""
    return per_image(alpha, z) * z - per_image(sigma, z) * v


def v_from_x(z: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The v that gives ``x``: ``v = (α z − x) / σ`` (σ > 0)."""
    return (per_image(alpha, z) * z - x) / per_image(sigma, z)


def ddim_step(
    z: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor, alpha_next: Tensor, sigma_next: Tensor
) -> Tensor:
    """Deterministic DDIM (Song et al., ICLR 2021, η = 0) from ``z_t`` with the predicted
    clean image ``x``: ``z_s = α_s x + σ_s ε̂`` with ``ε̂ = (z_t − α_t x) / σ_t``."""
    eps = (z - per_image(alpha, z) * x) / per_image(sigma, z)
    return per_image(alpha_next, z) * x + per_image(sigma_next, z) * eps


def progressive_target(
    z: Tensor,
    z_two_steps: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    alpha_end: Tensor,
    sigma_end: Tensor,
) -> Tensor:
    """The target ``x̃`` of progressive distillation: the clean-image prediction whose one
    DDIM step from ``z_t`` lands on the teacher's two-step result ``z_t''``.

    Formula: ``x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t)``; at the last
    step (σ_t'' = 0) it is ``z_t'' / α_t''``. Paper: Salimans & Ho, "Progressive
    Distillation for Fast Sampling of Diffusion Models", ICLR 2022 (Algorithm 2)."""
    z, z_two_steps = upcast(z), upcast(z_two_steps)
    ratio = per_image(sigma_end / sigma, z)
    return (z_two_steps - ratio * z) / (per_image(alpha_end, z) - ratio * per_image(alpha, z))


def truncated_snr_weight(alpha: Tensor, sigma: Tensor) -> Tensor:
    """The weight, in v-space, of the paper's "truncated SNR" x-space weighting
    ``max(SNR, 1)`` (``SNR = α²/σ²``): since ``‖x̃ − x̂‖² = σ² ‖ṽ − v̂‖²``, it is
    ``max(SNR, 1) · σ² = max(α², σ²)``. It keeps nearly pure-noise inputs from losing all
    weight, as SNR weighting alone would."""
    return torch.maximum(alpha.double() ** 2, sigma.double() ** 2)


def _weighted_error(prediction: Tensor, target: Tensor, weight: Tensor | None, what: str) -> Tensor:
    """Per example: ``weight · mean_pixels (prediction − target)²``."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"{what}: the prediction {tuple(prediction.shape)} and the target "
            f"{tuple(target.shape)} must have the same shape"
        )
    error = (upcast(prediction) - upcast(target)).square().flatten(1).mean(1)
    return error if weight is None else weight.to(error.dtype) * error


def progressive_distillation(
    student_logits: Tensor, teacher_logits: Tensor, example_weight: Tensor | None = None
) -> Tensor:
    """The loss of a progressive-distillation student: ``student_logits`` its v-prediction
    at ``z_t``, ``teacher_logits`` the target ``ṽ`` (the v that gives ``x̃``, the clean image
    of ``progressive_target``), ``example_weight`` each example's weight
    (``truncated_snr_weight``).

    Formula: ``L = mean_i w_i · mean_pixels (v̂_i − ṽ_i)²`` with ``w_i = max(α_t², σ_t²)``,
    the paper's ``max(SNR, 1) · ‖x̃ − x̂‖²`` written in v-space. No weight: plain mean
    squared error. Reduction: mean over examples. T² scaling: no.
    Paper: Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models",
    ICLR 2022.
    """
    what = "progressive_distillation"
    return _weighted_error(student_logits, teacher_logits, example_weight, what).mean()


def denoising(
    student_logits: Tensor, labels: Tensor, example_weight: Tensor | None = None
) -> Tensor:
    """The diffusion model's own training loss: its v-prediction against the true
    ``v = α_t ε − σ_t x`` (the batch's ``labels``, written by the noising transform).

    Formula: ``L = mean_i w_i · mean_pixels (v̂_i − v_i)²`` (w: ``example_weight``, default
    1; with ``truncated_snr_weight`` it is the x-space loss ``max(SNR, 1) ‖x − x̂‖²``).
    Reduction: mean over examples. T² scaling: no.
    Paper: Salimans & Ho, ICLR 2022 (the v-parameterisation); Ho et al., "Denoising
    Diffusion Probabilistic Models", NeurIPS 2020.
    """
    return _weighted_error(student_logits, labels, example_weight, "denoising").mean()


def consistency_distillation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    example_weight: Tensor | None = None,
    *,
    huber_c: float | None = None,
) -> Tensor:
    """The consistency-distillation loss: the student's v-prediction at ``z_{n+1}`` against
    the target v of its EMA copy's clean-image estimate at the teacher's one-step ODE
    solution ``ẑ_n`` (``teacher_logits``, written in v at ``z_{n+1}``).

    Formula: per example ``e = w · mean_pixels (v̂ − ṽ)²`` with ``w = σ²`` (``example_weight``),
    which is the x-space distance ``mean (f_θ(z_{n+1}) − f_θ⁻(ẑ_n))²``; L2: ``L = mean e``;
    pseudo-Huber (``huber_c`` = c): ``L = mean (√(e + c²) − c)``. The consistency function
    ``f(z, τ) = α_τ z − σ_τ v̂`` is the boundary-condition parameterisation with
    ``c_skip = α_τ``, ``c_out = −σ_τ`` on the network's v output: ``f(z, 0) = z``.
    Reduction: mean over examples. T² scaling: no.
    Paper: Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023 (CD, pseudo-
    Huber: Song & Dhariwal, "Improved Techniques for Training Consistency Models", 2023).
    """
    what = "consistency_distillation"
    error = _weighted_error(student_logits, teacher_logits, example_weight, what)
    if huber_c is not None:
        error = (error + huber_c**2).sqrt() - huber_c
    return error.mean()
