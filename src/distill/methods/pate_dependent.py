"""PATE's data-dependent privacy analysis (Papernot et al., "Scalable Private Learning with
PATE", ICLR 2018, Section 4 and Appendix B): when the teachers agree, a GNMax answer is
almost certain, and its Rényi-DP cost on *this* data is far below the worst case.

For one GNMax query with vote counts n, top class i* and noise σ:

    q̃ = min(1 − 1/C, Σ_{i≠i*} ½ erfc((n_{i*} − n_i) / (2σ)))      (Proposition 7)

bounds Pr[answer ≠ i*]. GNMax is (μ, μ/σ²)-RDP for every μ > 1. With μ₂ = σ·√(log 1/q̃),
μ₁ = μ₂ + 1, εᵢ = μᵢ/σ² (Proposition 10), and when q̃ is small enough (Theorem 6's
condition), the query is (λ, ε)-RDP at this data for each order λ < μ₁:

    ε(λ) = 1/(λ−1) · log((1 − q̃)·A^{λ−1} + q̃·B^{λ−1}),
    A = (1 − q̃) / (1 − (q̃·e^{ε₂})^{(μ₂−1)/μ₂}),   B = e^{ε₁} / q̃^{1/(μ₁−1)},

capped by the data-independent λ/σ². Confident-GNMax's threshold check (the top count plus
N(0, σ₁²) against T, a mechanism of sensitivity 1) is bounded the same way with σ = √2·σ₁
and q̃ the probability of the less likely of its two outcomes. The run's cost sums the check
over every query and GNMax over the answered ones; RDP converts to (ε, δ) as the
data-independent bound does (Opacus's ``get_privacy_spent``).

The data-dependent ε depends on the private votes, so releasing it leaks: the paper
releases it through smooth sensitivity. That release is not built here; the ε is reported
as the analysis of the run, named so, beside the data-independent bound that may be
published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import log_ndtr

from distill.methods.pate import ORDERS, rdp_analysis


def log_q_gnmax(counts: Sequence[float], sigma: float) -> float:
    """log q̃: the log of Proposition 7's bound on GNMax answering other than the top class."""
    votes = np.asarray(counts, dtype=np.float64)
    top = int(votes.argmax())
    gaps = np.delete(votes[top] - votes, top)
    # ½ erfc(x / (2σ)) = Φ(−x / (σ√2)): the probability that N(0, 2σ²) exceeds the gap
    log_terms = log_ndtr(-gaps / (sigma * math.sqrt(2)))
    log_q = float(np.logaddexp.reduce(log_terms))
    return min(log_q, math.log1p(-1 / len(votes)))


def log_pr_answered(counts: Sequence[float], threshold: float, sigma_threshold: float) -> float:
    """log Pr[max n + N(0, σ₁²) ≥ T]: the threshold check lets the query through."""
    top = float(np.max(np.asarray(counts, dtype=np.float64)))
    return float(log_ndtr((top - threshold) / sigma_threshold))


def _log1mexp(x: float) -> float:
    """log(1 − eˣ) for x < 0, accurate near 0 and far below it."""
    return math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))


def gaussian_rdp(log_q: float, sigma: float, orders: Sequence[float] = ORDERS) -> np.ndarray:
    """ε(λ) per order of a Gaussian NoisyMax answer whose chance of leaving the likeliest
    outcome is at most exp(log_q): Theorem 6 where its condition holds, else λ/σ²."""
    lam = np.asarray(orders, dtype=np.float64)
    variance = sigma**2
    independent = lam / variance
    if log_q >= 0:
        return independent
    mu2 = math.sqrt(variance * -log_q)
    mu1 = mu2 + 1
    if mu2 <= 1:  # q̃ too large for Theorem 6 at this σ
        return independent
    eps1, eps2 = mu1 / variance, mu2 / variance
    applies = lam < mu1
    small_enough = (
        log_q <= (mu2 - 1) * eps2 - mu2 * (math.log1p(1 / (mu1 - 1)) + math.log1p(1 / (mu2 - 1)))
        and -log_q > eps2
    )
    if not applies.any() or not small_enough:
        return independent
    log_1mq = _log1mexp(log_q)
    log_a = log_1mq - _log1mexp((log_q + eps2) * (1 - 1 / mu2))
    log_b = eps1 - log_q / (mu1 - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dependent = np.logaddexp(log_1mq + (lam - 1) * log_a, log_q + (lam - 1) * log_b) / (lam - 1)
    return np.where(applies, np.minimum(independent, dependent), independent)


def threshold_rdp(log_answered: float, sigma_threshold: float, orders: Sequence[float] = ORDERS):
    """ε(λ) per order of Confident-GNMax's threshold check on one query."""
    # the less likely of the two outcomes; a certain one (log 0) as the smallest double
    log_q = min(log_answered, _log1mexp(log_answered)) if log_answered < 0 else -745.0
    return gaussian_rdp(max(log_q, -745.0), math.sqrt(2) * sigma_threshold, orders)


def data_dependent_epsilon(
    counts: np.ndarray,
    answered: np.ndarray,
    sigma: float,
    delta: float,
    threshold: float | None = None,
    sigma_threshold: float | None = None,
    orders: Sequence[float] = ORDERS,
) -> tuple[float, float]:
    """(ε, the best order α) of the run at ``delta`` by the data-dependent analysis: the
    threshold check of every query (Confident-GNMax) and GNMax on the ``answered`` ones,
    each bounded on its own vote counts (``counts``: queries × classes)."""
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), got {delta}")
    total = np.zeros(len(orders))
    for votes, was_answered in zip(np.asarray(counts), np.asarray(answered), strict=True):
        if threshold is not None and sigma_threshold is not None:
            total += threshold_rdp(log_pr_answered(votes, threshold, sigma_threshold),
                                   sigma_threshold, orders)  # fmt: skip
        if was_answered:
            total += gaussian_rdp(log_q_gnmax(votes, sigma), sigma, orders)
    epsilon, order = rdp_analysis().get_privacy_spent(
        orders=list(orders), rdp=list(total), delta=delta
    )
    return float(epsilon), float(order)
