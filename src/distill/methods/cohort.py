"""Online (mutual) distillation: peers trained together, each learning from the others.

Deep Mutual Learning (Zhang et al., CVPR 2018) needs no pre-trained teacher: every peer
minimises its label cross-entropy plus the KL divergence from each other peer's (detached)
prediction. ``Cohort`` holds the peers as one module, so the ordinary engine trains them
together with one optimizer — each peer's loss reaches only its own weights, so this is
the same as one optimizer per peer. The cohort's output is the mean of the peers' logits
(what ``evaluate`` scores); the peers' own logits are tapped at ``"stack"``.

    cohort = Cohort([make_student() for _ in range(2)])
    Distiller(cohort, None, mutual_objective(temperature=1.0)).fit(train, val, epochs=5)
    cohort.peers[0]   # each peer is a student of its own
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.batch import logits_of
from distill.losses.mutual import mutual_learning
from distill.objective import Objective, Term

PEER_LOGITS_TAP = "stack"


class Cohort(nn.Module):
    """Peers behind one forward: returns the mean of their logits; ``stack`` sees the
    (K, N, …, C) tensor of every peer's logits."""

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)
        self.stack = nn.Identity()

    def forward(self, *args, **kwargs) -> Tensor:
        logits = self.stack(torch.stack([logits_of(p(*args, **kwargs)) for p in self.peers]))
        return logits.mean(0)


def mutual_objective(
    temperature: float = 1.0, ce_weight: float = 1.0, kd_weight: float = 1.0
) -> Objective:
    """The DML objective for a ``Cohort`` student (no teacher)."""
    return Objective(
        mutual=Term(
            mutual_learning,
            temperature=temperature,
            student=PEER_LOGITS_TAP,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
        )
    )
