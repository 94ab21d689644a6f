"""The chunked LM-head loss equals the naive full-logit loss in float64: values and
gradients, for every divergence, with masks, labels, padded vocabularies and soft-capping."""

import pytest
import torch

from distill import losses
from distill.losses.tokens import lm_head_kd

DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


def naive(
    s_h,
    s_w,
    t_h,
    t_w,
    *,
    divergence,
    temperature,
    labels,
    mask,
    ce_weight,
    vocab,
    softcap=None,
    s_b=None,
):
    s = s_h.reshape(-1, s_h.shape[-1]) @ s_w[:vocab].T
    if s_b is not None:
        s = s + s_b[:vocab]
    t = t_h.reshape(-1, t_h.shape[-1]) @ t_w[:vocab].T
    if softcap is not None:
        s, t = softcap * torch.tanh(s / softcap), softcap * torch.tanh(t / softcap)
    selected = torch.ones(s.shape[0], dtype=torch.bool)
    if mask is not None:
        selected &= mask.reshape(-1)
    if labels is not None:
        selected &= labels.reshape(-1) != -100
    options = {"jsd": {"beta": 0.5}, "skew_kl": {"skew": 0.1}, "skew_reverse_kl": {"skew": 0.1}}
    fn = getattr(losses, divergence)
    value = fn(s, t, temperature=temperature, mask=selected, **options.get(divergence, {}))
    if ce_weight:
        value = value + ce_weight * losses.cross_entropy(s, labels.reshape(-1), mask=selected)
    return value


def inputs(tokens=(3, 7), hs=6, ht=10, vs=17, vt=17):
    torch.manual_seed(0)
    s_h = torch.randn(*tokens, hs, dtype=torch.float64, requires_grad=True)
    s_w = (torch.randn(vs, hs, dtype=torch.float64) * 0.5).requires_grad_()
    t_h = torch.randn(*tokens, ht, dtype=torch.float64)
    t_w = torch.randn(vt, ht, dtype=torch.float64) * 0.5
    labels = torch.randint(0, min(vs, vt), tokens)
    labels[0, :2] = -100
    mask = torch.rand(tokens) > 0.2
    return s_h, s_w, t_h, t_w, labels, mask


def grads(value, *tensors):
    return torch.autograd.grad(value, tensors)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_equals_naive_values_and_gradients(divergence, chunk_size):
    s_h, s_w, t_h, t_w, labels, mask = inputs()
    kwargs = dict(divergence=divergence, temperature=2.0, labels=labels, mask=mask, ce_weight=0.3)
    ours = lm_head_kd(s_h, s_w, t_h, t_w, chunk_size=chunk_size, **kwargs)
    ref = naive(s_h, s_w, t_h, t_w, vocab=17, **kwargs)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, s_h, s_w), grads(ref, s_h, s_w), strict=True):
        torch.testing.assert_close(a, b)


def test_padded_teacher_vocab_softcap_and_bias():
    s_h, s_w, t_h, t_w, labels, mask = inputs(vs=17, vt=24)  # the teacher head is padded
    bias = torch.randn(17, dtype=torch.float64, requires_grad=True)
    kwargs = dict(divergence="kl", temperature=1.5, labels=labels, mask=mask, ce_weight=0.0)
    ours = lm_head_kd(
        s_h, s_w, t_h, t_w, vocab_size=17, softcap=5.0, student_bias=bias, chunk_size=5, **kwargs
    )
    ref = naive(s_h, s_w, t_h, t_w, vocab=17, softcap=5.0, s_b=bias, **kwargs)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(grads(ours, s_h, s_w, bias), grads(ref, s_h, s_w, bias), strict=True):
        torch.testing.assert_close(a, b)


def test_different_vocabularies_are_refused():
    s_h, s_w, t_h, t_w, _, _ = inputs(vs=17, vt=24)
    with pytest.raises(ValueError, match="vocab_size"):
        lm_head_kd(s_h, s_w, t_h, t_w)


def test_global_count_makes_split_batches_add_up():
    """Two halves, each normalised by the token count of the whole, sum to the whole."""
    s_h, s_w, t_h, t_w, labels, mask = inputs(tokens=(4, 5))
    kw = dict(divergence="jsd", labels=labels, mask=mask, ce_weight=0.5)
    whole = lm_head_kd(s_h, s_w, t_h, t_w, **kw)
    count = int((mask & (labels != -100)).sum())
    halves = sum(
        lm_head_kd(
            s_h[rows],
            s_w,
            t_h[rows],
            t_w,
            divergence="jsd",
            labels=labels[rows],
            mask=mask[rows],
            ce_weight=0.5,
            global_count=count,
        )
        for rows in (slice(0, 2), slice(2, 4))
    )
    torch.testing.assert_close(halves, whole)
    for a, b in zip(grads(whole, s_h, s_w), grads(halves, s_h, s_w), strict=True):
        torch.testing.assert_close(a, b)


def test_bfloat16_inputs_match_float32_roughly():
    s_h, s_w, t_h, t_w, _, mask = inputs()
    h32 = s_h.detach().float().requires_grad_()
    h16 = s_h.detach().bfloat16().requires_grad_()
    exact = lm_head_kd(h32, s_w.float(), t_h.float(), t_w.float(), mask=mask)
    low = lm_head_kd(h16, s_w.bfloat16(), t_h.bfloat16(), t_w.bfloat16(), mask=mask)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, exact, atol=0.05, rtol=0.05)
    (g32,) = torch.autograd.grad(exact, h32)
    (g16,) = torch.autograd.grad(low, h16)
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(g16.float(), g32, atol=0.02, rtol=0.1)
