"""Diffusion in the engine: noise levels, the v-predicting denoiser (ε converted, guidance),
DDIM sampling and the progressive-distillation teacher checked with an oracle that knows
the clean image, then a tiny diffusers UNet trained and distilled one round through the
ordinary ``Distiller``."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller, Objective, Term, losses
from distill.batch import Batch
from distill.methods.diffusion import (
    Denoiser,
    NoisedImages,
    NoiseLevels,
    Noising,
    TwoStepTeacher,
    ddim_sample,
)

diffusers = pytest.importorskip("diffusers", reason="pip install diffusers (the dev extra has it)")


def linear_levels(steps=100):
    betas = torch.linspace(1e-4, 0.05, steps, dtype=torch.float64)
    return NoiseLevels(torch.cumprod(1 - betas, 0))


class Oracle(nn.Module):
    """Knows the clean images: answers the exact v (or ε) for any z and level."""

    def __init__(self, x, levels, prediction="v_prediction"):
        super().__init__()
        self.x, self.levels, self.prediction = x, levels, prediction

    def forward(self, z, timestep, class_labels=None):
        alpha, sigma = self.levels.alpha_sigma(timestep.double() + 1)
        a, s = alpha.view(-1, 1, 1, 1).float(), sigma.view(-1, 1, 1, 1).float()
        eps = (z - a * self.x) / s
        return a * eps - s * self.x if self.prediction == "v_prediction" else eps


def test_noise_levels_follow_the_table_and_start_clean():
    table = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    levels = NoiseLevels(table)
    alpha, sigma = levels.alpha_sigma(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(alpha**2, torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4, dtype=torch.float64))
    middle, _ = levels.alpha_sigma(torch.tensor([1.5]))  # log-linear between 0.9 and 0.5
    torch.testing.assert_close(middle**2, torch.tensor([(0.9 * 0.5) ** 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        levels.grid(3), torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="values in"):
        NoiseLevels(torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_ddim_with_an_exact_denoiser_returns_the_clean_image(prediction, steps):
    levels = linear_levels()
    x = torch.randn(3, 1, 4, 4)
    denoiser = Denoiser(Oracle(x, levels, prediction), levels, prediction=prediction)
    sample = ddim_sample(denoiser, levels, steps, torch.randn(3, 1, 4, 4))
    torch.testing.assert_close(sample, x, atol=1e-4, rtol=1e-4)


def test_the_two_step_teacher_of_an_exact_denoiser_asks_for_the_exact_v():
    levels = linear_levels()
    x = torch.randn(4, 1, 4, 4)
    denoiser = Denoiser(Oracle(x, levels), levels)
    batch = Noising(levels, steps=4, seed=1)(Batch(args=(x,), labels=torch.zeros(4).long()))
    assert set(batch.kwargs["tau"].tolist()) <= {100.0, 75.0, 50.0, 25.0}
    answer = TwoStepTeacher(denoiser, levels, steps=4)(batch).logits
    torch.testing.assert_close(answer, batch.labels, atol=1e-4, rtol=1e-4)  # the true v


def test_guidance_mixes_the_conditional_and_unconditional_answers():
    class ByClass(nn.Module):
        def forward(self, z, timestep, class_labels=None):
            return z * 0 + class_labels.view(-1, 1, 1, 1).float()

    levels = linear_levels()
    guided = Denoiser(ByClass(), levels, null_class=0, guidance=2.0)
    out = guided(torch.zeros(2, 1, 2, 2), torch.tensor([50.0, 50.0]), torch.tensor([3, 5]))
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([9.0, 15.0]))  # (1 + w) c − w · 0
    with pytest.raises(ValueError, match="cannot be converted to v"):
        Denoiser(ByClass(), levels, prediction="sample")


def tiny_unet(classes=10):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, num_class_embeds=classes + 1,
    )  # fmt: skip


@pytest.mark.e2e
def test_a_tiny_unet_trains_and_then_distils_one_round_through_the_engine(digits):
    train = digits[0]
    x, y = train.tensors[0] * 2 - 1, train.tensors[1]  # digits in [-1, 1]
    images = TensorDataset(x[:512], y[:512])
    levels = linear_levels()
    teacher = Denoiser(tiny_unet(), levels)
    val = NoisedImages(TensorDataset(x[512:640], y[512:640]), levels, seed=3)
    run = Distiller(
        teacher, objective=Objective(denoise=Term(losses.denoising)),
        batch_transform=Noising(levels, seed=0), lr=3e-3, progress=False, select_metric="loss",
    )  # fmt: skip
    before = run.evaluate(DataLoader(val, batch_size=64))["loss"]
    run.fit(DataLoader(images, batch_size=64, shuffle=True), DataLoader(val, batch_size=64),
            max_steps=60)  # fmt: skip
    after = run.evaluate(DataLoader(val, batch_size=64))["loss"]
    assert after < 0.7 * before, (before, after)

    # one round: a 2-step student from the 4-step teacher, a copy of it to start
    student = copy.deepcopy(teacher)
    two_step = TwoStepTeacher(teacher, levels, steps=2)
    round_val = NoisedImages(TensorDataset(x[512:640], y[512:640]), levels, steps=2, seed=4)
    pd = Distiller(
        student, two_step, Objective(pd=Term(losses.progressive_distillation)),
        batch_transform=Noising(levels, steps=2, seed=1), lr=1e-3, progress=False,
        select_metric="teacher_target_loss",
    )  # fmt: skip
    start = pd.evaluate(DataLoader(round_val, batch_size=64))["teacher_target_loss"]
    pd.fit(DataLoader(images, batch_size=64, shuffle=True), DataLoader(round_val, batch_size=64),
           max_steps=40)  # fmt: skip
    end = pd.evaluate(DataLoader(round_val, batch_size=64))["teacher_target_loss"]
    assert end < start, (start, end)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    samples = ddim_sample(student, levels, 2, noise, torch.arange(4))
    assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()


def test_a_diffusers_pipeline_folder_loads_as_unet_schedule_and_prediction(tmp_path):
    from distill.errors import ModelError
    from distill.models.diffusion import load_hf_diffusers

    unet = tiny_unet()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    loaded, alphas_cumprod, prediction = load_hf_diffusers(f"hf-diffusers:{tmp_path / 'pipe'}")
    assert prediction == "v_prediction" and alphas_cumprod.shape == (100,)
    torch.testing.assert_close(alphas_cumprod, scheduler.alphas_cumprod.double())
    z, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 50])
    classes = torch.tensor([1, 2])
    torch.testing.assert_close(
        loaded(z, t, class_labels=classes).sample, unet(z, t, class_labels=classes).sample
    )
    # a scheduler that is not variance-preserving is named, as is a folder without a UNet
    karras = diffusers.EDMEulerScheduler()
    diffusers.DDPMPipeline(unet=unet, scheduler=karras).save_pretrained(tmp_path / "edm")
    with pytest.raises(ModelError, match="scheduler EDMEulerScheduler is not a variance"):
        load_hf_diffusers(f"hf-diffusers:{tmp_path / 'edm'}")
    with pytest.raises(ModelError, match="there is no folder"):
        load_hf_diffusers(f"hf-diffusers:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="cannot load a model from the folder"):
        load_hf_diffusers(f"hf-diffusers:{tmp_path / 'empty'}")


def test_consistency_distillation_of_an_exact_denoiser_asks_for_the_exact_v_and_samples_x():
    from distill.methods.diffusion import ConsistencyTeacher, consistency_sample
    from distill.teachers import EMA

    levels = linear_levels()
    x = torch.randn(4, 1, 4, 4)
    oracle = Denoiser(Oracle(x, levels), levels)
    batch = Noising(levels, steps=8, seed=2, weighting="x_space")(
        Batch(args=(x,), labels=torch.zeros(4).long())
    )
    _, sigma = levels.alpha_sigma(batch.kwargs["tau"])
    torch.testing.assert_close(batch.meta["example_weight"], (sigma**2).float())
    teacher = ConsistencyTeacher(oracle, EMA(oracle, momentum=0.9), levels, steps=8)
    torch.testing.assert_close(teacher(batch).logits, batch.labels, atol=1e-4, rtol=1e-4)
    for steps in (1, 2, 4):
        sample = consistency_sample(oracle, levels, steps, torch.randn(4, 1, 4, 4))
        torch.testing.assert_close(sample, x, atol=1e-4, rtol=1e-4)


def test_the_consistency_loss_is_l2_or_pseudo_huber_on_the_weighted_error():
    g = torch.Generator().manual_seed(3)
    student, target = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    weight = torch.tensor([0.1, 0.5, 1.0])
    error = weight * (student - target).square().flatten(1).mean(1)
    torch.testing.assert_close(
        losses.consistency_distillation(student, target, weight), error.mean()
    )
    huber = ((error + 0.03**2).sqrt() - 0.03).mean()
    torch.testing.assert_close(
        losses.consistency_distillation(student, target, weight, huber_c=0.03), huber
    )


def test_consistency_distillation_trains_through_the_engine_with_an_ema_target(digits):
    from distill.methods.diffusion import ConsistencyTeacher, consistency_sample
    from distill.teachers import EMA

    train = digits[0]
    x, y = train.tensors[0] * 2 - 1, train.tensors[1]
    images = TensorDataset(x[:256], y[:256])
    levels = linear_levels()
    teacher = Denoiser(tiny_unet(), levels).eval()
    student = copy.deepcopy(teacher)
    ema = EMA(student, momentum=0.95)
    before = [p.clone() for p in ema.model.parameters()]
    target = ConsistencyTeacher(teacher, ema, levels, steps=8)
    run = Distiller(
        student, target, Objective(cd=Term(losses.consistency_distillation, huber_c=0.03)),
        batch_transform=Noising(levels, steps=8, seed=0, weighting="x_space"), lr=1e-3,
        progress=False, select_metric=None,
    )  # fmt: skip
    run.fit(DataLoader(images, batch_size=64, shuffle=True), max_steps=8)
    moved = any(not torch.equal(a, b) for a, b in zip(before, ema.model.parameters(), strict=True))
    assert moved  # the target network follows the student
    samples = consistency_sample(student, levels, 2, torch.randn(3, 1, 8, 8), torch.arange(3))
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(samples).all()
