"""What DeepInversion optimises synthetic inputs against (Yin et al., CVPR 2020): the
teacher's BatchNorm statistics and two image priors. These score inputs, not a student, so
they are not objective terms of a recipe (the registry does not list them);
``methods.inversion`` uses them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def batchnorm_statistics(
    means: Sequence[Tensor],
    variances: Sequence[Tensor],
    running_means: Sequence[Tensor],
    running_variances: Sequence[Tensor],
    layer_weights: Sequence[float] | None = None,
) -> Tensor:
    """Feature-distribution regulariser of DeepInversion (Yin et al. 2020, eq. 4):

        R_feature = Σ_l w_l (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂)

    with μ_l(x), σ²_l(x) the per-channel batch mean and variance of BatchNorm layer l's
    input and μ̂_l, σ̂²_l its running statistics; ``layer_weights`` default to 1 (the
    paper weighs the first layer more). A sum over layers; no temperature."""
    weights = layer_weights or [1.0] * len(means)
    total = means[0].new_zeros(())
    for w, m, v, rm, rv in zip(
        weights, means, variances, running_means, running_variances, strict=True
    ):
        total = total + w * (torch.linalg.vector_norm(m - rm) + torch.linalg.vector_norm(v - rv))
    return total


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation, a smoothness prior (Mahendran & Vedaldi 2015; used by
    DeepInversion): the mean absolute difference between neighbouring pixels, along each
    spatial axis (images (N, C, H, W); signals (N, C, L) along L), summed over axes."""
    total = images.new_zeros(())
    for axis in range(2, images.dim()):
        total = total + images.diff(dim=axis).abs().mean()
    return total


def l2_prior(images: Tensor) -> Tensor:
    """The L2 image prior: the mean of x² over every entry (keeps inputs in range)."""
    return images.pow(2).mean()
