"""Feature losses against float64 references, invariances, and gradchecks."""

import pytest
import torch
import torch.nn.functional as F

from distill import losses
from distill.projectors import ConvProjector, build_projector

torch.manual_seed(0)


def feats(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def ref_at(fs, ft, p=2):
    def a(f):
        m = f.abs().pow(p).mean(1).reshape(f.shape[0], -1)
        return m / m.norm(dim=1, keepdim=True)

    return (a(fs) - a(ft)).pow(2).mean()


def ref_pkt(s, t, eps=1e-7):
    def probs(x):
        x = x / x.norm(dim=1, keepdim=True)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdim=True)

    ps, pt = probs(s), probs(t)
    return (pt * ((pt + eps) / (ps + eps)).log()).sum(1).mean()


def huber(x):
    return torch.where(x.abs() < 1, 0.5 * x * x, x.abs() - 0.5)


def ref_rkd_distance(s, t):
    def psi(x):
        n = x.shape[0]
        d = torch.stack([torch.stack([(x[i] - x[j]).norm() for j in range(n)]) for i in range(n)])
        mu = d.sum() / (n * (n - 1))
        return d / mu

    return huber(psi(s) - psi(t)).mean()


def ref_rkd_angle(s, t):
    def psi(x):
        n = x.shape[0]
        out = torch.zeros(n, n, n, dtype=x.dtype)
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    eij, ekj = x[i] - x[j], x[k] - x[j]
                    if eij.norm() > 0 and ekj.norm() > 0:
                        out[j, i, k] = (eij / eij.norm()) @ (ekj / ekj.norm())
        return out

    return huber(psi(s) - psi(t)).mean()


def test_hint_is_mean_squared_error():
    s, t = feats(4, 3, 5, 5), feats(4, 3, 5, 5)
    torch.testing.assert_close(losses.hint(s, t), (s - t).pow(2).mean())
    assert float(losses.hint(s, s.clone())) == 0.0


def test_hint_with_token_mask():
    s, t = feats(2, 5, 8), feats(2, 5, 8)
    mask = torch.rand(2, 5) > 0.5
    mask[0, 0] = True
    torch.testing.assert_close(losses.hint(s, t, mask=mask), (s[mask] - t[mask]).pow(2).mean())


def test_attention_transfer_matches_reference_and_is_scale_invariant():
    s, t = feats(4, 8, 6, 6), feats(4, 16, 6, 6)
    value = losses.attention_transfer(s, t)
    torch.testing.assert_close(value, ref_at(s, t))
    torch.testing.assert_close(losses.attention_transfer(7.5 * s, t), value)
    torch.testing.assert_close(losses.attention_transfer(s, 0.01 * t), value)
    assert float(losses.attention_transfer(s, 3.0 * s)) < 1e-20


def test_attention_transfer_pools_to_the_smaller_map():
    s, t = feats(2, 4, 8, 8), feats(2, 4, 4, 4)
    expected = ref_at(F.adaptive_avg_pool2d(s, (4, 4)), t)
    torch.testing.assert_close(losses.attention_transfer(s, t), expected)


def test_cosine_embedding():
    s, t = feats(3, 4, 8), feats(3, 4, 8)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    torch.testing.assert_close(losses.cosine_embedding(s, t), (1 - cos).mean())
    assert float(losses.cosine_embedding(s, 2.0 * s)) < 1e-12


def test_rkd_matches_reference_and_is_scale_invariant():
    s, t = feats(6, 5), feats(6, 9)
    d, a = losses.rkd_distance(s, t), losses.rkd_angle(s, t)
    torch.testing.assert_close(d, ref_rkd_distance(s, t))
    torch.testing.assert_close(a, ref_rkd_angle(s, t))
    torch.testing.assert_close(losses.rkd_distance(4.0 * s, t), d)
    torch.testing.assert_close(losses.rkd_angle(0.25 * s, 3.0 * t), a)
    assert float(losses.rkd_distance(s, 10.0 * s)) < 1e-20


def test_pkt_matches_reference():
    s, t = feats(8, 5), feats(8, 12)
    torch.testing.assert_close(losses.pkt(s, t), ref_pkt(s, t))
    assert abs(float(losses.pkt(s, 2.0 * s))) < 1e-12


@pytest.mark.parametrize(
    "fn,s_shape,t_shape",
    [
        (losses.hint, (3, 4), (3, 4)),
        (losses.attention_transfer, (2, 3, 3, 3), (2, 5, 3, 3)),
        (losses.cosine_embedding, (3, 4), (3, 4)),
        (losses.rkd_distance, (4, 3), (4, 5)),
        (losses.rkd_angle, (4, 3), (4, 5)),
        (losses.pkt, (4, 3), (4, 5)),
    ],
)
def test_feature_loss_gradcheck(fn, s_shape, t_shape):
    s, t = feats(*s_shape).requires_grad_(), feats(*t_shape)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,))


def test_projector_choice_and_shapes():
    assert isinstance(build_projector((4, 8), (4, 8)), torch.nn.Identity)
    linear = build_projector((4, 7, 8), (4, 7, 16))
    assert isinstance(linear, torch.nn.Linear) and linear.out_features == 16
    conv = build_projector((4, 8, 8, 8), (4, 16, 4, 4))
    assert isinstance(conv, ConvProjector)
    assert conv(torch.randn(4, 8, 8, 8)).shape == (4, 16, 4, 4)
    conv1d = build_projector((4, 8, 40), (4, 32, 40))
    assert conv1d(torch.randn(4, 8, 40)).shape == (4, 32, 40)
    with pytest.raises(ValueError, match="projector"):
        build_projector((4, 8, 40), (4, 32, 20))
