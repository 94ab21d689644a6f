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


def test_the_data_dependent_gnmax_bound_against_float64_references():
    """Proposition 7's q̃ (exact for two classes, above a Monte-Carlo estimate for three,
    capped at 1 − 1/C for a tie) and Theorem 6's ε(λ) evaluated term by term in float64."""
    import numpy as np

    from distill.methods.pate_dependent import gaussian_rdp, log_pr_answered, log_q_gnmax

    sigma = 40.0
    assert math.exp(log_q_gnmax([200, 50], sigma)) == pytest.approx(
        0.5 * math.erfc(150 / (2 * sigma)), rel=1e-12
    )
    votes = np.array([180.0, 60.0, 10.0])
    rng = np.random.default_rng(0)
    noisy = votes + rng.normal(0, sigma, (400_000, 3))
    wrong = float((noisy.argmax(1) != 0).mean())
    assert wrong <= math.exp(log_q_gnmax(votes, sigma)) <= 1.05 * wrong + 1e-3
    assert math.exp(log_q_gnmax([10, 10], sigma)) == pytest.approx(0.5)
    assert math.exp(log_pr_answered([30, 220], 200, 150)) == pytest.approx(
        0.5 * math.erfc((200 - 220) / (150 * math.sqrt(2))), rel=1e-12
    )

    q = 0.5 * math.erfc(150 / (2 * sigma)) + 0.5 * math.erfc(160 / (2 * sigma))
    orders = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    found = gaussian_rdp(math.log(q), sigma, orders)
    mu2 = sigma * math.sqrt(math.log(1 / q))
    mu1, var = mu2 + 1, sigma**2
    a = (1 - q) / (1 - (q * math.exp(mu2 / var)) ** ((mu2 - 1) / mu2))
    b = math.exp(mu1 / var) / q ** (1 / (mu1 - 1))
    for lam, value in zip(orders, found, strict=True):
        by_hand = math.log((1 - q) * a ** (lam - 1) + q * b ** (lam - 1)) / (lam - 1)
        assert value == pytest.approx(min(by_hand, lam / var), rel=1e-9)
    assert found[3] < orders[3] / var / 3  # at λ = 16, far below the data-independent bound
    tie = gaussian_rdp(math.log(0.5), sigma, orders)
    assert list(tie) == pytest.approx([lam / var for lam in orders])  # nothing to gain


def test_unanimous_votes_cost_far_less_under_the_data_dependent_analysis():
    import numpy as np

    from distill.methods.pate import pate_epsilon
    from distill.methods.pate_dependent import data_dependent_epsilon

    counts = np.zeros((200, 10))
    counts[:, 3] = 240  # 250 teachers, nearly unanimous
    counts[:, 5] = 10
    answered = np.ones(200, dtype=bool)
    independent, _ = pate_epsilon(200, 40.0, 1e-5, queries=200, sigma_threshold=150.0)
    dependent, _ = data_dependent_epsilon(
        counts, answered, 40.0, 1e-5, threshold=200.0, sigma_threshold=150.0
    )
    assert 0 < dependent < independent / 3
    split = counts.copy()
    split[:, 3], split[:, 5] = 125, 125  # a tie everywhere: no better than the bound
    tied, _ = data_dependent_epsilon(split, answered, 40.0, 1e-5)
    assert tied == pytest.approx(pate_epsilon(200, 40.0, 1e-5)[0], rel=1e-6)
