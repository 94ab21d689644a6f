"""Logit losses against float64 references written here, identities and gradchecks."""

import math

import pytest
import torch

from distill import losses

torch.manual_seed(0)


def softmax64(z, t=1.0):
    z = z.double() / t
    e = (z - z.max(-1, keepdim=True).values).exp()
    return e / e.sum(-1, keepdim=True)


def kl_rows(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def mean_over(per_row, mask):
    if mask is None:
        return per_row.mean()
    m = mask.double()
    return (per_row * m).sum() / m.sum()


def ref_kl(s, t, T, mask=None):
    return T * T * mean_over(kl_rows(softmax64(t, T), softmax64(s, T)), mask)


def ref_reverse_kl(s, t, T, mask=None):
    return T * T * mean_over(kl_rows(softmax64(s, T), softmax64(t, T)), mask)


def ref_jsd(s, t, T, beta, mask=None):
    ps, pt = softmax64(s, T), softmax64(t, T)
    m = beta * pt + (1 - beta) * ps
    return T * T * mean_over(beta * kl_rows(pt, m) + (1 - beta) * kl_rows(ps, m), mask)


def ref_skew_kl(s, t, T, a, mask=None):
    ps, pt = softmax64(s, T), softmax64(t, T)
    return T * T * mean_over(kl_rows(pt, a * pt + (1 - a) * ps), mask)


def ref_skew_reverse_kl(s, t, T, a, mask=None):
    ps, pt = softmax64(s, T), softmax64(t, T)
    return T * T * mean_over(kl_rows(ps, (1 - a) * pt + a * ps), mask)


def ref_tvd(s, t, T, mask=None):
    return mean_over(0.5 * (softmax64(s, T) - softmax64(t, T)).abs().sum(-1), mask)


def ref_cross_entropy(s, y, eps):
    p = softmax64(s)
    c = s.shape[-1]
    q = torch.full_like(p, eps / c)
    q[torch.arange(len(y)), y] += 1 - eps
    return -(q * p.log()).sum(-1).mean()


def ref_dkd(s, t, y, alpha, beta, T):
    total = 0.0
    for i in range(s.shape[0]):
        ps, pt = softmax64(s[i], T), softmax64(t[i], T)
        k = int(y[i])
        bs = torch.stack([ps[k], 1 - ps[k]])
        bt = torch.stack([pt[k], 1 - pt[k]])
        keep = [j for j in range(s.shape[1]) if j != k]
        ns, nt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        total = total + alpha * kl_rows(bt, bs) + beta * kl_rows(nt, ns)
    return T * T * total / s.shape[0]


def pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())


def ref_dist(s, t, T, inter_w, intra_w):
    ps, pt = softmax64(s, T), softmax64(t, T)
    inter = 1 - torch.stack([pearson(ps[i], pt[i]) for i in range(ps.shape[0])]).mean()
    intra = 1 - torch.stack([pearson(ps[:, c], pt[:, c]) for c in range(ps.shape[1])]).mean()
    return T * T * (inter_w * inter + intra_w * intra)


def ref_lskd(s, t, T):
    def z(x):
        x = x.double()
        mean = x.mean(-1, keepdim=True)
        std = ((x - mean).pow(2).sum(-1, keepdim=True) / (x.shape[-1] - 1)).sqrt()
        return (x - mean) / (std + 1e-7)

    return ref_kl(z(s), z(t), T)


def logits(*shape, scale=3.0):
    return torch.randn(*shape, dtype=torch.float64) * scale


PAIRWISE = {
    "kl": (lambda s, t, T, m: losses.kl(s, t, temperature=T, mask=m), ref_kl),
    "reverse_kl": (
        lambda s, t, T, m: losses.reverse_kl(s, t, temperature=T, mask=m),
        ref_reverse_kl,
    ),
    "jsd": (
        lambda s, t, T, m: losses.jsd(s, t, beta=0.3, temperature=T, mask=m),
        lambda s, t, T, m=None: ref_jsd(s, t, T, 0.3, m),
    ),
    "skew_kl": (
        lambda s, t, T, m: losses.skew_kl(s, t, skew=0.1, temperature=T, mask=m),
        lambda s, t, T, m=None: ref_skew_kl(s, t, T, 0.1, m),
    ),
    "skew_reverse_kl": (
        lambda s, t, T, m: losses.skew_reverse_kl(s, t, skew=0.2, temperature=T, mask=m),
        lambda s, t, T, m=None: ref_skew_reverse_kl(s, t, T, 0.2, m),
    ),
    "tvd": (lambda s, t, T, m: losses.tvd(s, t, temperature=T, mask=m), ref_tvd),
}


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_pairwise_divergence_matches_reference(name, temperature):
    fn, ref = PAIRWISE[name]
    s, t = logits(16, 10), logits(16, 10)
    torch.testing.assert_close(fn(s, t, temperature, None), ref(s, t, temperature))


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_divergence_on_tokens_with_mask(name):
    fn, ref = PAIRWISE[name]
    s, t = logits(3, 7, 11), logits(3, 7, 11)
    mask = torch.rand(3, 7) > 0.4
    expected = ref(s[mask], t[mask], 2.0)
    torch.testing.assert_close(fn(s, t, 2.0, mask), expected)
    torch.testing.assert_close(fn(s, t, 2.0, mask), ref(s, t, 2.0, mask))


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_divergence_is_zero_when_student_equals_teacher(name):
    fn, _ = PAIRWISE[name]
    z = logits(8, 10)
    assert abs(float(fn(z, z.clone(), 3.0, None))) < 1e-12


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_divergence_gradcheck(name):
    fn, _ = PAIRWISE[name]
    s = logits(4, 5).requires_grad_()
    t = logits(4, 5)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, 2.0, None), (s,))


def test_kl_t_squared_scaling():
    s, t = logits(8, 10), logits(8, 10)
    T = 5.0
    unscaled = kl_rows(softmax64(t, T), softmax64(s, T)).mean()
    torch.testing.assert_close(losses.kl(s, t, temperature=T), T * T * unscaled)
    # same softened distributions at T=1 give the unscaled value
    torch.testing.assert_close(losses.kl(s / T, t / T, temperature=1.0), unscaled)


def test_jsd_at_half_is_jensen_shannon():
    s, t = logits(8, 10), logits(8, 10)
    p, q = softmax64(t), softmax64(s)
    m = 0.5 * (p + q)
    js = (0.5 * kl_rows(p, m) + 0.5 * kl_rows(q, m)).mean()
    torch.testing.assert_close(losses.jsd(s, t, beta=0.5), js)
    assert float(js) <= math.log(2)


def test_jsd_rejects_end_points():
    s = logits(2, 3)
    with pytest.raises(ValueError, match="beta"):
        losses.jsd(s, s, beta=0.0)


def test_skew_zero_is_plain_kl():
    s, t = logits(8, 10), logits(8, 10)
    torch.testing.assert_close(losses.skew_kl(s, t, skew=0.0), losses.kl(s, t))
    torch.testing.assert_close(losses.skew_reverse_kl(s, t, skew=0.0), losses.reverse_kl(s, t))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_reference(smoothing):
    s, y = logits(16, 10), torch.randint(0, 10, (16,))
    torch.testing.assert_close(
        losses.cross_entropy(s, y, label_smoothing=smoothing), ref_cross_entropy(s, y, smoothing)
    )


def test_cross_entropy_ignores_ignore_index_and_mask():
    s, y = logits(2, 5, 7), torch.randint(0, 7, (2, 5))
    y[0, 0] = -100
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 4] = False
    keep = (y != -100) & mask
    expected = ref_cross_entropy(s[keep], y[keep], 0.0)
    torch.testing.assert_close(losses.cross_entropy(s, y, mask=mask), expected)


def test_cross_entropy_gradcheck():
    s, y = logits(4, 5).requires_grad_(), torch.randint(0, 5, (4,))
    assert torch.autograd.gradcheck(lambda x: losses.cross_entropy(x, y, label_smoothing=0.1), (s,))


def test_dkd_matches_reference():
    s, t, y = logits(12, 10), logits(12, 10), torch.randint(0, 10, (12,))
    torch.testing.assert_close(
        losses.dkd(s, t, y, tckd_weight=1.0, nckd_weight=8.0, temperature=4.0),
        ref_dkd(s, t, y, 1.0, 8.0, 4.0),
    )


def test_dkd_decomposes_classic_kd():
    """KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD, row by row (Zhao et al., eq. 5)."""
    s, t, y = logits(6, 10), logits(6, 10), torch.randint(0, 10, (6,))
    for i in range(6):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        tckd = losses.dkd(si, ti, yi, tckd_weight=1.0, nckd_weight=0.0, temperature=1.0)
        nckd = losses.dkd(si, ti, yi, tckd_weight=0.0, nckd_weight=1.0, temperature=1.0)
        pt_target = softmax64(ti)[0, yi[0]]
        torch.testing.assert_close(losses.kl(si, ti), tckd + (1 - pt_target) * nckd)


def test_dkd_zero_when_equal_and_gradcheck():
    z, y = logits(5, 6), torch.randint(0, 6, (5,))
    assert float(losses.dkd(z, z.clone(), y)) < 1e-12
    s = logits(5, 6).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: losses.dkd(x, z, y, temperature=2.0), (s,))


def test_dkd_on_tokens_with_mask():
    s, t, y = logits(2, 4, 6), logits(2, 4, 6), torch.randint(0, 6, (2, 4))
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        losses.dkd(s, t, y, temperature=2.0, mask=mask),
        ref_dkd(s[mask], t[mask], y[mask], 1.0, 8.0, 2.0),
    )


def test_dist_matches_reference_and_gradcheck():
    s, t = logits(16, 10), logits(16, 10)
    torch.testing.assert_close(
        losses.dist(s, t, inter_weight=2.0, intra_weight=0.5, temperature=4.0),
        ref_dist(s, t, 4.0, 2.0, 0.5),
    )
    assert float(losses.dist(s, s.clone())) < 1e-12
    x = logits(6, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: losses.dist(v, t[:6, :5], temperature=2.0), (x,))


def test_logit_standardized_kl_matches_reference_and_is_shift_scale_invariant():
    s, t = logits(16, 10), logits(16, 10)
    value = losses.logit_standardized_kl(s, t, temperature=2.0)
    torch.testing.assert_close(value, ref_lskd(s, t, 2.0))
    shifted_scaled = losses.logit_standardized_kl(3.0 * s + 7.0, t, temperature=2.0)
    torch.testing.assert_close(shifted_scaled, value)
    assert float(losses.logit_standardized_kl(s, 2.0 * s, temperature=2.0)) < 1e-10
    x = logits(4, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: losses.logit_standardized_kl(v, t[:4, :5]), (x,))


def test_losses_reduce_as_means_independent_of_batch_size():
    s, t = logits(8, 10), logits(8, 10)
    doubled = losses.kl(torch.cat([s, s]), torch.cat([t, t]), temperature=2.0)
    torch.testing.assert_close(doubled, losses.kl(s, t, temperature=2.0))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="student shape"):
        losses.kl(logits(4, 10), logits(4, 12))
    with pytest.raises(ValueError, match="mask shape"):
        losses.kl(logits(4, 10), logits(4, 10), mask=torch.ones(3, dtype=torch.bool))


def test_half_precision_inputs_are_computed_in_float32():
    s, t = logits(8, 10).bfloat16(), logits(8, 10).bfloat16()
    value = losses.kl(s, t, temperature=2.0)
    assert value.dtype == torch.float32
    # computed in float32, so it matches the float64 reference to float32 precision
    expected = ref_kl(s.double(), t.double(), 2.0).float()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_dkd_unlabelled_rows_use_the_teachers_top_class():
    s, t, y = logits(6, 5), logits(6, 5), torch.randint(0, 5, (6,))
    hidden = y.clone()
    hidden[::2] = -100
    filled = torch.where(hidden == -100, t.argmax(-1), hidden)
    torch.testing.assert_close(losses.dkd(s, t, hidden), losses.dkd(s, t, filled))
