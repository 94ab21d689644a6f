"""Private aggregation of teacher ensembles (PATE): teachers trained on disjoint partitions
of private labelled data answer a student's queries on public inputs with the noisy argmax
of their votes, and the answers cost a privacy budget that is accounted for.

- ``partition``: the private rows split into ``teachers`` disjoint, nearly equal parts.
- ``vote_counts``: per query, how many teachers predicted each class.
- ``gnmax`` (Papernot et al., ICLR 2018): argmax of the counts plus N(0, σ²) noise.
- ``confident_gnmax`` (ICLR 2018, Algorithm 1): a query is answered only when the top
  count plus N(0, σ₁²) clears ``threshold``; answered ones get GNMax with σ₂.
- ``pate_epsilon``: the data-independent Rényi-DP bound. Changing one private example
  changes one teacher's vote: the count vector moves by at most √2 in L2 (one class
  −1, another +1), so each GNMax answer is (α, α/σ²)-RDP. The threshold check moves
  the top count by at most 1 and is (α, α/(2σ₁²))-RDP for every query, answered or
  not. RDP adds up over queries and converts to (ε, δ)-DP; Opacus's RDP accountant does
  both (``compute_rdp`` of the Gaussian mechanism, ``get_privacy_spent``).

What PATE protects is the partitioned private data; the public inputs the student sees
(and their answered labels) are not private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.errors import MissingDependency

ORDERS = [
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    16.0,
    20.0,
    24.0,
    32.0,
    48.0,
    64.0,
    128.0,
    256.0,
    512.0,
]


def partition(rows: int, teachers: int, seed: int = 0) -> list[Tensor]:
    """Indices of ``rows`` shuffled and split into ``teachers`` disjoint parts whose sizes
    differ by at most one."""
    if not 1 <= teachers <= rows:
        raise ValueError(f"cannot split {rows} rows among {teachers} teachers: 1..{rows}")
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    return list(order.tensor_split(teachers))


def vote_counts(predictions: Tensor, num_classes: int) -> Tensor:
    """(teachers, queries) predicted classes → (queries, classes) vote counts."""
    counts = torch.zeros(predictions.shape[1], num_classes)
    ones = torch.ones_like(predictions, dtype=counts.dtype)
    return counts.scatter_add_(1, predictions.T.long(), ones.T)


def gnmax(counts: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """The Gaussian NoisyMax answer per query: argmax_j (n_j + N(0, σ²))."""
    if sigma <= 0:
        raise ValueError(f"the noise σ must be > 0, got {sigma}")
    noise = torch.randn(counts.shape, generator=generator) * sigma
    return (counts + noise).argmax(dim=1)


class Votes(nn.Module):
    """The teachers as one classifier: their noiseless plurality vote. ``counts`` gives the
    votes per class; ``forward`` the log of the smoothed vote shares, (n_j + 1) / (K + C),
    so its argmax is the plurality and it can be scored like any classifier. Only for
    measuring the ensemble: the student must learn from ``gnmax`` answers instead."""

    def __init__(self, members: Sequence[nn.Module], num_classes: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.num_classes = num_classes

    def counts(self, x: Tensor) -> Tensor:
        predictions = torch.stack([member(x).argmax(dim=-1) for member in self.members])
        return vote_counts(predictions.cpu(), self.num_classes).to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        shares = (self.counts(x) + 1) / (len(self.members) + self.num_classes)
        return shares.log()


@dataclass
class Answers:
    """Confident-GNMax's output: a label per query (-1 where it did not answer)."""

    labels: Tensor
    answered: Tensor  # bool per query

    @property
    def count(self) -> int:
        return int(self.answered.sum())


def confident_gnmax(
    counts: Tensor,
    threshold: float,
    sigma_threshold: float,
    sigma: float,
    generator: torch.Generator | None = None,
) -> Answers:
    """Answer the queries whose top vote count plus N(0, σ₁²) reaches ``threshold`` with
    GNMax at σ₂ (``sigma``); the others get no label (-1)."""
    if sigma_threshold <= 0:
        raise ValueError(f"the threshold noise σ₁ must be > 0, got {sigma_threshold}")
    top = counts.max(dim=1).values
    answered = top + torch.randn(top.shape, generator=generator) * sigma_threshold >= threshold
    labels = torch.where(answered, gnmax(counts, sigma, generator), torch.full_like(top, -1).long())
    return Answers(labels, answered)


def rdp_analysis() -> object:
    """Opacus's RDP analysis module (``compute_rdp``, ``get_privacy_spent``)."""
    try:
        from opacus.accountants.analysis import rdp
    except ImportError as error:
        raise MissingDependency(
            "PATE's privacy accounting uses Opacus's RDP accountant: pip install 'distill[private]'"
        ) from error
    return rdp


def pate_rdp(
    answered: int,
    sigma: float,
    queries: int = 0,
    sigma_threshold: float | None = None,
    orders: Sequence[float] = ORDERS,
) -> list[float]:
    """The RDP ε(α) per order of ``answered`` GNMax answers at σ, plus, for Confident
    GNMax, the threshold check of all ``queries`` at σ₁."""
    rdp = rdp_analysis()
    # GNMax: L2 sensitivity √2, so it is the Gaussian mechanism with multiplier σ / √2
    total = rdp.compute_rdp(
        q=1.0, noise_multiplier=sigma / math.sqrt(2), steps=answered, orders=list(orders)
    )
    if sigma_threshold is not None and queries:
        check = rdp.compute_rdp(
            q=1.0, noise_multiplier=sigma_threshold, steps=queries, orders=list(orders)
        )
        total = [a + b for a, b in zip(total, check, strict=True)]
    return [float(v) for v in total]


def pate_epsilon(
    answered: int,
    sigma: float,
    delta: float,
    queries: int = 0,
    sigma_threshold: float | None = None,
    orders: Sequence[float] = ORDERS,
) -> tuple[float, float]:
    """(ε, the best order α) of the data-independent bound at ``delta``."""
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), got {delta}")
    rdp = rdp_analysis()
    values = pate_rdp(answered, sigma, queries, sigma_threshold, orders)
    epsilon, order = rdp.get_privacy_spent(orders=list(orders), rdp=values, delta=delta)
    return float(epsilon), float(order)
