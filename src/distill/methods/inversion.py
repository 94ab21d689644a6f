"""Data-free distillation: DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020)
synthesises a transfer set from the teacher alone.

Inputs start as noise and are optimised (Adam) so that the teacher classifies them as
chosen target classes while the statistics of every BatchNorm layer's input match the
layer's running mean and variance, which summarise the teacher's training data:

    L(x) = CE(f_t(x), y) + w_bn Σ_l w_l (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂)
           + w_tv TV(x) + w_l2 ‖x‖²  [ − w_adi JS(f_t(x), f_s(x)) ]

each step on a randomly shifted (and, for images, flipped) copy, the inputs clamped to their
valid range (``input_range``: the pixel range after the teacher's normalisation) if given.
Adaptive DeepInversion (the bracket) also rewards inputs on which a ``student`` disagrees
with the teacher.
A teacher without BatchNorm layers has no statistics to match: ``InversionError`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import ModelError
from distill.losses.inversion import batchnorm_statistics, l2_prior, total_variation
from distill.losses.logits import jsd


class InversionError(ModelError):
    """The teacher cannot be inverted (no BatchNorm statistics to match)."""


@dataclass
class InversionSettings:
    """DeepInversion's knobs (Yin et al.'s CIFAR settings, scaled to small inputs)."""

    steps: int = 200
    lr: float = 0.1
    bn_weight: float = 0.05
    first_bn_multiplier: float = 10.0
    tv_weight: float = 1e-3
    l2_weight: float = 1e-5
    adaptive_weight: float = 0.0
    jitter: int = 2
    flip: bool = True
    input_range: tuple[float, float] | None = None  # clamp after each step (valid pixels)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model``; ``InversionError`` when it has none."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise InversionError(
            f"DeepInversion matches the teacher's BatchNorm running statistics, and "
            f"{type(model).__name__} has no BatchNorm layers; distil it on a transfer set "
            "of real or public inputs instead (data.labeled with the rest unlabelled), or "
            "train the student with PATE on public inputs"
        )
    return layers


class BatchNormInputs:
    """Forward hooks on every BatchNorm layer of ``model``: the per-channel mean and
    (biased) variance of each layer's input in the last forward."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.means: list[Tensor] = []
        self.variances: list[Tensor] = []
        self.handles = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        self.means.append(x.mean(dim=dims))
        self.variances.append(x.var(dim=dims, unbiased=False))

    def loss(self, first_multiplier: float) -> Tensor:
        weights = [first_multiplier] + [1.0] * (len(self.layers) - 1)
        running_means = [layer.running_mean for layer in self.layers]
        running_variances = [layer.running_var for layer in self.layers]
        value = batchnorm_statistics(
            self.means, self.variances, running_means, running_variances, weights
        )
        self.means, self.variances = [], []
        return value

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def shift_and_flip(x: Tensor, jitter: int, flip: bool, generator: torch.Generator) -> Tensor:
    """``x`` rolled by a random shift of up to ``jitter`` along each spatial axis and, for
    images, flipped horizontally half the time (DeepInversion's jitter)."""
    if jitter:
        shifts = torch.randint(-jitter, jitter + 1, (x.dim() - 2,), generator=generator)
        x = torch.roll(x, shifts=shifts.tolist(), dims=list(range(2, x.dim())))
    if flip and x.dim() == 4 and torch.rand((), generator=generator) < 0.5:
        x = x.flip(dims=[3])
    return x


def deep_inversion(
    teacher: nn.Module,
    targets: Tensor,
    shape: tuple[int, ...],
    settings: InversionSettings | None = None,
    *,
    student: nn.Module | None = None,
    seed: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """One batch of synthetic inputs of ``shape`` (per example) that ``teacher`` assigns
    to ``targets``; returns them and the last step's loss terms. The teacher (and a
    ``student``, for the adaptive term) stays frozen and in eval mode."""
    settings = settings or InversionSettings()
    generator = torch.Generator().manual_seed(seed)
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    watch = BatchNormInputs(teacher)
    inputs = torch.randn((len(targets), *shape), generator=generator).to(device)
    inputs.requires_grad_(True)
    targets = targets.to(device)
    optimizer = torch.optim.Adam([inputs], lr=settings.lr, betas=(0.5, 0.9))
    terms: dict[str, Tensor] = {}
    try:
        for _ in range(settings.steps):
            optimizer.zero_grad(set_to_none=True)
            seen = shift_and_flip(inputs, settings.jitter, settings.flip, generator)
            logits = teacher(seen)
            terms = {
                "ce": F.cross_entropy(logits, targets),
                "bn": settings.bn_weight * watch.loss(settings.first_bn_multiplier),
                "tv": settings.tv_weight * total_variation(seen),
                "l2": settings.l2_weight * l2_prior(seen),
            }
            if student is not None and settings.adaptive_weight:
                student_logits = student.eval()(seen)
                terms["adaptive"] = -settings.adaptive_weight * jsd(student_logits, logits)
            sum(terms.values()).backward()
            optimizer.step()
            if settings.input_range is not None:
                with torch.no_grad():
                    inputs.clamp_(*settings.input_range)
    finally:
        watch.remove()
        teacher.train(was_training)
    return inputs.detach(), {name: float(value.detach()) for name, value in terms.items()}
