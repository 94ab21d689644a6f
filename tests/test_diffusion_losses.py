"""The arithmetic of progressive distillation, held to float64 identities: DDIM steps of
the true image follow the forward process, the target makes one student step land where
two teacher steps did, and the losses are the weighted mean squared errors they say."""

import pytest
import torch

from distill.losses.diffusion import (
    ddim_step,
    denoising,
    progressive_distillation,
    progressive_target,
    truncated_snr_weight,
    v_from_x,
    x_from_v,
)
from distill.losses.registry import loss_info


def levels(*alpha_bar):
    a = torch.tensor(alpha_bar, dtype=torch.float64)
    return a.sqrt(), (1 - a).sqrt()


def test_v_and_x_convert_both_ways_and_match_the_definition():
    x, eps = (
        torch.randn(3, 1, 4, 4, dtype=torch.float64),
        torch.randn(3, 1, 4, 4, dtype=torch.float64),
    )
    alpha, sigma = levels(0.9, 0.5, 0.01)
    z = alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps
    v = alpha.view(-1, 1, 1, 1) * eps - sigma.view(-1, 1, 1, 1) * x  # v = α ε − σ x
    torch.testing.assert_close(x_from_v(z, v, alpha, sigma), x)
    torch.testing.assert_close(v_from_x(z, x, alpha, sigma), v)


def test_a_ddim_step_with_the_true_image_follows_the_forward_process():
    x, eps = (
        torch.randn(2, 3, 4, 4, dtype=torch.float64),
        torch.randn(2, 3, 4, 4, dtype=torch.float64),
    )
    alpha, sigma = levels(0.3, 0.6)
    alpha_s, sigma_s = levels(0.7, 0.95)
    z = alpha.view(-1, 1, 1, 1) * x + sigma.view(-1, 1, 1, 1) * eps
    expected = alpha_s.view(-1, 1, 1, 1) * x + sigma_s.view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(ddim_step(z, x, alpha, sigma, alpha_s, sigma_s), expected)


@pytest.mark.parametrize("last", [False, True])
def test_one_step_to_the_target_lands_where_two_teacher_steps_did(last):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64)
    first, second = (torch.randn(4, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    a_t, s_t = levels(0.2, 0.3, 0.1, 0.4)
    a_mid, s_mid = levels(0.5, 0.6, 0.4, 0.7)
    a_end, s_end = levels(*([1.0] * 4 if last else [0.8, 0.9, 0.85, 0.95]))
    z_mid = ddim_step(z, first, a_t, s_t, a_mid, s_mid)  # the teacher's two steps
    z_end = ddim_step(z_mid, second, a_mid, s_mid, a_end, s_end)
    target = progressive_target(z, z_end, a_t, s_t, a_end, s_end)
    torch.testing.assert_close(ddim_step(z, target, a_t, s_t, a_end, s_end), z_end)
    if last:  # the final step lands on the clean image: the target is that image
        torch.testing.assert_close(target, z_end)


def test_truncated_snr_weight_is_max_snr_one_in_x_space():
    alpha, sigma = levels(0.999, 0.5, 0.001)
    x_space = torch.clamp(alpha**2 / sigma**2, min=1.0)
    torch.testing.assert_close(truncated_snr_weight(alpha, sigma), x_space * sigma**2)


def test_the_losses_are_weighted_mean_squared_errors():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(3, 2, 4, 4, generator=g, requires_grad=True)
    target = torch.randn(3, 2, 4, 4, generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0])
    per_example = (student.double() - target.double()).square().flatten(1).mean(1)
    expected = (weight.double() * per_example).mean().float()
    torch.testing.assert_close(progressive_distillation(student, target, weight), expected)
    torch.testing.assert_close(denoising(student, target, weight), expected)
    torch.testing.assert_close(denoising(student, target), per_example.mean().float())
    progressive_distillation(student, target, weight).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must have the same shape"):
        denoising(student, target[:2])


def test_the_diffusion_losses_are_in_the_registry_and_read_the_example_weight():
    assert list(loss_info("progressive_distillation").reads) == [
        "student_logits", "teacher_logits", "example_weight"
    ]  # fmt: skip
    assert list(loss_info("denoising").reads) == ["student_logits", "labels", "example_weight"]
    assert not loss_info("denoising").reads_teacher


def test_frechet_distance_matches_scipy_and_is_zero_for_one_distribution():
    import numpy as np
    from scipy import linalg

    from distill.measure import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    b = (
        0.7
        * torch.randn(400, 6, generator=g, dtype=torch.float64)
        @ torch.randn(6, 6, generator=g, dtype=torch.float64)
        + 0.3
    )
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
