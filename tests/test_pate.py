"""PATE's pieces: disjoint partitions, vote counts, (Confident) GNMax answers, and the
data-independent privacy bound checked against the Rényi-DP formulas worked by hand."""

import math

import pytest
import torch

from distill.methods import pate


def test_partitions_are_disjoint_nearly_equal_and_cover_every_row():
    parts = pate.partition(103, 10, seed=1)
    assert len(parts) == 10 and {len(p) for p in parts} == {10, 11}
    rows = torch.cat(parts)
    assert sorted(rows.tolist()) == list(range(103))
    with pytest.raises(ValueError, match="cannot split 5 rows among 6 teachers"):
        pate.partition(5, 6)


def test_vote_counts_and_gnmax():
    predictions = torch.tensor([[0, 1, 2], [0, 1, 1], [2, 1, 1]])  # 3 teachers, 3 queries
    counts = pate.vote_counts(predictions, num_classes=3)
    assert counts.tolist() == [[2, 0, 1], [0, 3, 0], [0, 2, 1]]
    g = torch.Generator().manual_seed(0)
    assert pate.gnmax(counts, sigma=1e-3, generator=g).tolist() == [0, 1, 1]
    # with noise far above the counts, the answer is close to uniform over the classes
    many = pate.vote_counts(torch.zeros(5, 3000, dtype=torch.long), num_classes=4)
    share = (pate.gnmax(many, sigma=1000.0, generator=g) == 0).float().mean()
    assert 0.2 < share < 0.3
    with pytest.raises(ValueError, match="σ must be > 0"):
        pate.gnmax(counts, sigma=0.0)


def test_confident_gnmax_answers_only_where_the_teachers_agree():
    counts = torch.tensor([[9.0, 1.0, 0.0], [4.0, 3.0, 3.0]])  # consensus, then a split vote
    g = torch.Generator().manual_seed(0)
    answers = pate.confident_gnmax(
        counts, threshold=7, sigma_threshold=0.01, sigma=0.01, generator=g
    )
    assert answers.answered.tolist() == [True, False] and answers.labels.tolist() == [0, -1]
    assert answers.count == 1


def hand_epsilon(rdp_of_order, delta):
    """Balle et al. 2020's RDP → (ε, δ) conversion, minimised over the orders."""
    return min(
        rdp_of_order(a) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for a in pate.ORDERS
    )


@pytest.mark.parametrize(("answered", "sigma"), [(1, 40.0), (100, 40.0), (1000, 100.0)])
def test_the_gnmax_bound_is_the_rdp_of_the_gaussian_mechanism_worked_by_hand(answered, sigma):
    rdp = pate.pate_rdp(answered, sigma)
    assert rdp == pytest.approx([answered * a / sigma**2 for a in pate.ORDERS])
    epsilon, order = pate.pate_epsilon(answered, sigma, delta=1e-5)
    assert epsilon == pytest.approx(hand_epsilon(lambda a: answered * a / sigma**2, 1e-5))
    assert order in pate.ORDERS


def test_confident_gnmax_also_pays_for_the_threshold_check_of_every_query():
    epsilon, _ = pate.pate_epsilon(50, 40.0, 1e-5, queries=400, sigma_threshold=150.0)
    expected = hand_epsilon(lambda a: 50 * a / 40.0**2 + 400 * a / (2 * 150.0**2), 1e-5)
    assert epsilon == pytest.approx(expected)
    # more answers or less noise: more privacy spent
    assert pate.pate_epsilon(100, 40.0, 1e-5)[0] > pate.pate_epsilon(50, 40.0, 1e-5)[0]
    assert pate.pate_epsilon(50, 20.0, 1e-5)[0] > pate.pate_epsilon(50, 40.0, 1e-5)[0]
    with pytest.raises(ValueError, match="δ must be in"):
        pate.pate_epsilon(50, 40.0, delta=1.0)
