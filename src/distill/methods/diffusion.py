"""Diffusion models in the engine: training a denoiser, sampling with DDIM, and progressive
distillation of the sampler (Salimans & Ho, ICLR 2022), all on any UNet that maps
``(z, timestep, class_labels)`` to a prediction (a diffusers ``UNet2DModel``).

- ``NoiseLevels``: ``α(τ), σ(τ)`` for a continuous level ``τ ∈ [0, T]`` from a scheduler's
  discrete ``alphas_cumprod`` (``τ = k + 1`` is training timestep ``k``; ``τ = 0`` the clean
  image), so a sampler of any number of steps, halved round after round, has its levels.
- ``Denoiser``: the UNet as a v-predictor ``forward(z, tau, class_labels) → v̂``, converting
  an ε-prediction, with classifier-free guidance when asked (``guidance`` w:
  ``(1 + w) v̂(c) − w v̂(∅)``, the null class being ``null_class``).
- ``Noising``: the batch transform of training and distillation: clean images ``(x, y)``
  become ``{z, tau, class_labels}`` at levels drawn from a sampler's grid (or uniformly),
  with the true v as ``labels`` and the truncated-SNR weight as ``example_weight``.
- ``TwoStepTeacher``: a teacher whose answer for ``z`` at a grid level is the v-target of
  progressive distillation: two DDIM steps of the teacher sampler (half the student's
  step each), and the v that makes one student step land there.
- ``ConsistencyTeacher``: the target of consistency distillation (Song et al., ICML
  2023): one DDIM (ODE) step of the teacher from ``z`` to the next level of its grid, then
  the clean-image estimate of the student's moving average (``teachers.EMA``) there.
- ``ddim_sample``: deterministic DDIM sampling in ``steps`` steps;
  ``consistency_sample``: multistep consistency sampling (denoise, re-noise).
- ``NoisedImages``: a fixed noising of a dataset (validation rows that are the same at
  every evaluation).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.batch import Batch
from distill.losses.diffusion import (
    ddim_step,
    per_image,
    progressive_target,
    truncated_snr_weight,
    v_from_x,
    x_from_v,
)
from distill.outputs import TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.ema import EMA
from distill.training.distributed import process_index


class NoiseLevels:
    """``α(τ) = √ᾱ(τ)`` and ``σ(τ) = √(1 − ᾱ(τ))`` for ``τ ∈ [0, T]``: ``ᾱ(0) = 1`` and
    ``ᾱ(k + 1) = alphas_cumprod[k]``, log-linear in between."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        table = alphas_cumprod.double().flatten()
        if table.numel() < 2 or not bool(((table > 0) & (table < 1)).all()):
            raise ValueError("alphas_cumprod must hold values in (0, 1), one per timestep")
        self.log_table = torch.cat([torch.zeros(1, dtype=torch.float64), table.log()])
        self.steps = table.numel()  # T

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        tau = tau.double().clamp(0, self.steps).cpu()
        low = tau.floor().long().clamp(max=self.steps - 1)
        frac = tau - low
        log_bar = (1 - frac) * self.log_table[low] + frac * self.log_table[low + 1]
        alpha_bar = log_bar.exp()
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp_min(0).sqrt()

    def grid(self, steps: int) -> Tensor:
        """The levels of a ``steps``-step sampler, from pure noise (T) down to 0."""
        if steps < 1:
            raise ValueError(f"a sampler needs at least 1 step, got {steps}")
        return torch.linspace(self.steps, 0, steps + 1, dtype=torch.float64)


def _same_device(values: tuple[Tensor, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    return values[0].to(like.device), values[1].to(like.device)


class Denoiser(nn.Module):
    """``unet`` as a v-predictor at continuous levels: ``forward(z, tau, class_labels)``.

    ``prediction``: what the UNet outputs, ``"v_prediction"`` or ``"epsilon"`` (converted:
    ``x̂ = (z − σ ε̂)/α``, ``v̂ = α ε̂ − σ x̂``). The UNet sees timestep ``τ − 1`` (its
    training index). ``guidance`` w > 0 mixes the conditional and unconditional answers
    (``null_class``: the class the UNet was trained to read as "no class"). ``steps``: the
    DDIM steps it samples in (a buffer, kept with the weights: a distilled student knows
    its own step count). ``conditioning`` (classes + 1, L, D): for a text-conditional UNet,
    each class's prompt embeddings (the null class's, an empty prompt, last)."""

    def __init__(
        self,
        unet: nn.Module,
        levels: NoiseLevels,
        prediction: str = "v_prediction",
        null_class: int | None = None,
        guidance: float = 0.0,
        steps: int = 1,
        conditioning: Tensor | None = None,
    ) -> None:
        super().__init__()
        if prediction not in ("v_prediction", "epsilon"):
            raise ValueError(
                f"prediction type {prediction!r} cannot be converted to v: use v_prediction "
                "or epsilon"
            )
        if guidance and null_class is None:
            raise ValueError("classifier-free guidance needs the null class the UNet knows")
        self.unet, self.levels, self.prediction = unet, levels, prediction
        self.null_class, self.guidance = null_class, guidance
        config = getattr(unet, "config", None)  # a UNet without a class embedding takes none
        self.conditional = config is None or getattr(config, "num_class_embeds", None) is not None
        self.register_buffer("sampler_steps", torch.tensor(steps))  # saved with the weights
        # a text-conditional UNet: per class (the null class last) its prompt's embeddings
        self.register_buffer("conditioning", conditioning, persistent=False)
        self.sampler = "ddim"  # or "consistency": how its images are drawn (``sample``)

    def sample(
        self,
        noise: Tensor,
        class_labels: Tensor | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Images from ``noise`` in ``steps`` (default: its own) steps of its sampler."""
        steps = steps or int(self.sampler_steps)
        if self.sampler == "consistency":
            return consistency_sample(self, self.levels, steps, noise, class_labels, generator)
        return ddim_sample(self, self.levels, steps, noise, class_labels)

    def _raw(self, z: Tensor, tau: Tensor, class_labels: Tensor | None) -> Tensor:
        timestep = (tau.float() - 1).clamp_min(0).to(z.device)
        if self.conditioning is not None:  # classes read as their prompts' embeddings
            rows = (
                class_labels
                if class_labels is not None
                else torch.full((z.shape[0],), len(self.conditioning) - 1, device=z.device)
            )
            out = self.unet(z, timestep, encoder_hidden_states=self.conditioning[rows])
        else:
            out = self.unet(z, timestep, class_labels=class_labels if self.conditional else None)
        return getattr(out, "sample", out)

    def forward(self, z: Tensor, tau: Tensor, class_labels: Tensor | None = None) -> Tensor:
        out = self._raw(z, tau, class_labels)
        if self.guidance:
            assert class_labels is not None and self.null_class is not None
            unconditional = self._raw(z, tau, torch.full_like(class_labels, self.null_class))
            out = (1 + self.guidance) * out - self.guidance * unconditional
        if self.prediction == "epsilon":
            alpha, sigma = _same_device(self.levels.alpha_sigma(tau), z)
            x = (z - per_image(sigma, z) * out) / per_image(alpha, z)
            out = per_image(alpha, z) * out - per_image(sigma, z) * x
        return out


class Noising:
    """Batch transform: ``(x, y)`` → ``z = α x + σ ε`` at a level ``τ`` drawn for each
    image from the levels of a ``steps``-step sampler (its starting levels: ``grid(steps)``
    minus 0), or uniformly in (0, T] without ``steps``; labels: the true v; meta
    ``example_weight``: the truncated-SNR weight (``weighting="x_space"``: σ², the plain
    x-space error, as consistency distillation weighs it). ``null_class`` with ``drop`` > 0 replaces
    that share of the classes by the null class (training for classifier-free guidance).

    The draws of a step depend only on ``seed``, the process, the step and the
    micro-batch's place in it, so a run resumed from a checkpoint draws what the
    uninterrupted run drew. The
    model reads the transformed batch only (``shapes_inputs``: the engine's first forward,
    which checks taps, sees it too)."""

    shapes_inputs = True

    def __init__(
        self,
        levels: NoiseLevels,
        steps: int | None = None,
        *,
        null_class: int | None = None,
        drop: float = 0.0,
        seed: int = 0,
        weighting: str = "truncated_snr",
    ) -> None:
        if weighting not in ("truncated_snr", "x_space"):
            raise ValueError(f"weighting must be truncated_snr or x_space, got {weighting!r}")
        self.weighting = weighting
        self.levels, self.steps = levels, steps
        self.null_class, self.drop = null_class, drop
        self.seed, self.step, self.calls = seed, None, 0

    def _weight(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The v-space weight of the x-space loss: max(SNR, 1) σ² or plain σ²."""
        if self.weighting == "x_space":
            return sigma.double() ** 2
        return truncated_snr_weight(alpha, sigma)

    def _generator(self, step: int) -> torch.Generator:
        self.calls = self.calls + 1 if step == self.step else 0
        self.step = step
        key = (self.seed, process_index(), step, self.calls)  # each process its own draws
        return torch.Generator().manual_seed(hash(key) % 2**63)

    def __call__(self, batch: Batch, step: int = 0) -> Batch:
        x, labels = batch.args[0], batch.labels
        n, g = x.shape[0], self._generator(step)
        if self.steps is None:
            tau = (1 - torch.rand(n, generator=g, dtype=torch.float64)) * self.levels.steps
        else:
            starts = self.levels.grid(self.steps)[:-1]
            tau = starts[torch.randint(len(starts), (n,), generator=g)]
        eps = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        alpha, sigma = _same_device(self.levels.alpha_sigma(tau), x)
        z = per_image(alpha, x) * x + per_image(sigma, x) * eps
        v = per_image(alpha, x) * eps - per_image(sigma, x) * x
        classes = labels
        if classes is not None and self.drop > 0:
            assert self.null_class is not None
            dropped = (torch.rand(n, generator=g) < self.drop).to(classes.device)
            classes = torch.where(dropped, torch.full_like(classes, self.null_class), classes)
        return Batch(
            args=(),
            kwargs={"z": z, "tau": tau.to(x.device), "class_labels": classes},
            labels=v,
            meta={**batch.meta, "example_weight": self._weight(alpha, sigma).float()},
        )


class TwoStepTeacher(Teacher):
    """The teacher of one round of progressive distillation: for ``z`` at a level ``τ`` of
    the student's ``steps``-step grid, two DDIM steps of ``denoiser`` (to ``τ − Δ/2``, then
    ``τ − Δ``, Δ the student's step) and the v-target that makes one student step land
    there (``losses.diffusion.progressive_target``)."""

    def __init__(self, denoiser: nn.Module, levels: NoiseLevels, steps: int) -> None:
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.levels, self.steps = levels, steps
        self.delta = levels.steps / steps

    def to(self, device: torch.device | str) -> TwoStepTeacher:
        self.denoiser.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        z, tau = batch.kwargs["z"], batch.kwargs["tau"].double()
        classes = batch.kwargs.get("class_labels")
        middle, end = (tau - self.delta / 2).clamp_min(0), (tau - self.delta).clamp_min(0)
        (a_t, s_t), (a_mid, s_mid), (a_end, s_end) = (
            _same_device(self.levels.alpha_sigma(level), z) for level in (tau, middle, end)
        )
        x = x_from_v(z, self.denoiser(z, tau, classes), a_t, s_t)
        z_mid = ddim_step(z, x, a_t, s_t, a_mid, s_mid)
        x_mid = x_from_v(z_mid, self.denoiser(z_mid, middle, classes), a_mid, s_mid)
        z_end = ddim_step(z_mid, x_mid, a_mid, s_mid, a_end, s_end)
        target = progressive_target(z, z_end, a_t, s_t, a_end, s_end).to(z.dtype)
        return TeacherOutput(logits=v_from_x(z, target, a_t, s_t))


class ConsistencyTeacher(Teacher):
    """The target of consistency distillation for ``z`` at a level ``τ`` of ``denoiser``'s
    ``steps``-step grid: ``ẑ`` one DDIM step of ``denoiser`` below (the ODE solver), then the
    clean image that the student's moving average (``ema``, updated after every optimizer
    step) estimates at ``ẑ`` (``ẑ`` itself at level 0), written as the v at ``z``."""

    def __init__(self, denoiser: nn.Module, ema: EMA, levels: NoiseLevels, steps: int) -> None:
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.ema, self.levels, self.delta = ema, levels, levels.steps / steps

    def to(self, device: torch.device | str) -> ConsistencyTeacher:
        self.denoiser.to(device)
        self.ema.to(device)
        return self

    def after_step(self, step: int, total_steps: int) -> None:
        self.ema.after_step(step, total_steps)

    @property
    def state_module(self) -> nn.Module:
        return self.ema.state_module

    @torch.no_grad()
    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        z, tau = batch.kwargs["z"], batch.kwargs["tau"].double()
        classes = batch.kwargs.get("class_labels")
        below = (tau - self.delta).clamp_min(0)
        (a_t, s_t), (a_n, s_n) = (
            _same_device(self.levels.alpha_sigma(level), z) for level in (tau, below)
        )
        x = x_from_v(z, self.denoiser(z, tau, classes), a_t, s_t)
        z_below = ddim_step(z, x, a_t, s_t, a_n, s_n)
        target = x_from_v(z_below, self.ema.model(z_below, below, classes), a_n, s_n)
        clean = per_image((below == 0).to(z.device), z).bool()
        target = torch.where(clean, z_below, target)  # f(z, 0) = z
        return TeacherOutput(logits=v_from_x(z, target, a_t, s_t))


@torch.no_grad()
def consistency_sample(
    model: Callable[..., Tensor],
    levels: NoiseLevels,
    steps: int,
    noise: Tensor,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Multistep consistency sampling: the clean image ``f(z, T)`` from noise, then
    ``steps − 1`` times re-noised to the next level of a ``steps``-step grid and denoised
    again (Song et al., 2023, Algorithm 1), ``f(z, τ) = α_τ z − σ_τ v̂``."""
    grid = levels.grid(steps)[:-1]  # T, …, the last level above 0
    z, x = noise, noise
    for i, level in enumerate(grid):
        tau = level.repeat(z.shape[0])
        alpha, sigma = _same_device(levels.alpha_sigma(tau), z)
        if i:
            fresh = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
            z = per_image(alpha, z) * x + per_image(sigma, z) * fresh
        x = x_from_v(z, model(z, tau, class_labels), alpha, sigma)
    return x


@torch.no_grad()
def ddim_sample(
    denoiser: Callable[..., Tensor],
    levels: NoiseLevels,
    steps: int,
    noise: Tensor,
    class_labels: Tensor | None = None,
) -> Tensor:
    """Images from ``noise`` by ``steps`` deterministic DDIM steps of ``denoiser``."""
    grid = levels.grid(steps)
    z = noise
    for start, end in itertools.pairwise(grid):
        tau = start.repeat(z.shape[0])
        (a_t, s_t), (a_s, s_s) = (
            _same_device(levels.alpha_sigma(t), z) for t in (tau, end.repeat(z.shape[0]))
        )
        x = x_from_v(z, denoiser(z, tau, class_labels), a_t, s_t)
        z = ddim_step(z, x, a_t, s_t, a_s, s_s)
    return z


class NoisedImages(Dataset):
    """``dataset``'s images noised once by ``Noising(levels, steps, seed=seed)``: dict rows
    ``{z, tau, class_labels, labels (the true v), example_weight}``, the same at every
    evaluation."""

    def __init__(
        self, dataset: Dataset, levels: NoiseLevels, steps: int | None = None, seed: int = 0
    ) -> None:
        noising = Noising(levels, steps, seed=seed)
        parts = []
        for k, raw in enumerate(DataLoader(dataset, batch_size=256)):
            parts.append(noising(Batch(args=(raw[0],), labels=raw[1]), step=k))
        self.rows = {
            "z": torch.cat([b.kwargs["z"] for b in parts]),
            "tau": torch.cat([b.kwargs["tau"] for b in parts]),
            "class_labels": torch.cat([b.kwargs["class_labels"] for b in parts]),
            "labels": torch.cat([b.labels for b in parts]),  # type: ignore[misc]
            "example_weight": torch.cat([b.meta["example_weight"] for b in parts]),
        }

    def __len__(self) -> int:
        return len(self.rows["z"])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.rows.items()}
