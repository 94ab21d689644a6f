"""Data-free distillation with a generator (DAFL, Chen et al., ICCV 2019; ZSKT, Micaelli &
Storkey, NeurIPS 2019; DFAD, Fang et al. 2019), its images kept in a memory bank that a
student learns from alongside (CMI, Fang et al., IJCAI 2021; Fast-DFKD, Fang et al., AAAI
2022).

A generator G maps noise z (and, with ``conditional``, a target class y) to inputs. Each
round it takes one Adam step on

    L_G = w_bn R_BN(x) + L_cls(f_t(x)) + w_tv TV(x) − w_adv D(f_s(x), f_t(x)),   x = G(z)

with R_BN DeepInversion's BatchNorm-statistics loss on the teacher, L_cls the
cross-entropy to y (conditional) or DAFL's one-hot plus w_ie times its
information-entropy loss (the classes balanced without targets), TV the smoothness prior
and D the student's disagreement with the teacher (L1 on logits, DFAD; or KL, ZSKT), which
the generator maximises. A student takes ``student_steps`` KD steps on the round's inputs
(seen through the same random shift and flip as the teacher saw them) and on batches drawn
from the memory bank: every ``rounds_per_batch``-th round's inputs and the teacher's
logits on them, which are also the synthetic set that is kept. The generator is never
reset, so each round costs one teacher forward and backward per input, where
DeepInversion spends ``steps`` of them on each input it keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.generator import disagreement, information_entropy_loss, one_hot_loss
from distill.losses.inversion import total_variation
from distill.losses.logits import kl
from distill.methods.inversion import BatchNormInputs, shift_and_flip


@dataclass
class GeneratorSettings:
    """The generator's and the student's knobs (defaults tuned on Fashion-MNIST)."""

    latent: int = 100
    width: int = 32
    lr: float = 1e-3
    conditional: bool = True
    bn_weight: float = 1.0
    first_bn_multiplier: float = 10.0
    entropy_weight: float = 5.0
    tv_weight: float = 0.01
    adversarial_weight: float = 0.1
    disagreement: Literal["l1", "kl"] = "l1"
    jitter: int = 2
    flip: bool = True
    rounds_per_batch: int = 1  # rounds per kept batch: the others train, are not kept
    student_steps: int = 20
    student_lr: float = 2e-3
    temperature: float = 1.0
    input_range: tuple[float, float] | None = None


class ImageGenerator(nn.Module):
    """DAFL's generator, narrowed: a linear map of z to ``2·width`` maps at a quarter of
    the size, two (upsample ×2, conv 3, BatchNorm, LeakyReLU) blocks, a conv to the input's
    channels, cropped to ``shape`` (C, H, W) or (C, L); outputs squashed into
    ``input_range`` by a sigmoid, else standardised by a BatchNorm without affine (as
    DAFL). ``conditional``: z is multiplied by a learned embedding of the class."""

    def __init__(
        self,
        shape: tuple[int, ...],
        num_classes: int,
        latent: int = 100,
        width: int = 32,
        conditional: bool = True,
        input_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        dims = len(shape) - 1
        if dims not in (1, 2):
            raise ValueError(f"a generator makes (C, L) or (C, H, W) inputs, got {tuple(shape)}")
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.shape, self.input_range = tuple(shape), input_range
        self.start = [math.ceil(size / 4) for size in shape[1:]]
        self.embed = nn.Embedding(num_classes, latent) if conditional else None
        self.project = nn.Linear(latent, 2 * width * math.prod(self.start))
        self.body = nn.Sequential(
            norm(2 * width),
            nn.Upsample(scale_factor=2),
            conv(2 * width, 2 * width, 3, padding=1),
            norm(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            conv(2 * width, width, 3, padding=1),
            norm(width),
            nn.LeakyReLU(0.2),
            conv(width, shape[0], 3, padding=1),
        )
        self.out_norm = None if input_range is not None else norm(shape[0], affine=False)

    def forward(self, z: Tensor, classes: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if classes is None:
                raise ValueError("a conditional generator needs the classes to draw")
            z = z * self.embed(classes)
        x = self.project(z).view(len(z), -1, *self.start)
        x = self.body(x)[(..., *(slice(0, size) for size in self.shape[1:]))]
        if self.input_range is not None:
            low, high = self.input_range
            return low + (high - low) * torch.sigmoid(x)
        assert self.out_norm is not None
        return self.out_norm(x)


class GeneratorKD:
    """The generator, the student learning alongside it and the memory bank (see the
    module). ``round()`` makes one batch; ``state_dict`` / ``load_state_dict`` resume."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        shape: tuple[int, ...],
        num_classes: int,
        settings: GeneratorSettings | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        self.settings = s = settings or GeneratorSettings()
        self.teacher, self.student = teacher.eval(), student
        for p in teacher.parameters():  # frozen: the generator's loss never steps it
            p.requires_grad_(False)
        self.num_classes, self.batch_size = num_classes, batch_size
        self.random = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the generator's initial weights
        self.device = next(teacher.parameters()).device
        self.generator = ImageGenerator(
            shape, num_classes, s.latent, s.width, s.conditional, s.input_range
        ).to(self.device)
        self.generator_optimizer = torch.optim.Adam(
            self.generator.parameters(), lr=s.lr, betas=(0.5, 0.999)
        )
        self.student_optimizer = torch.optim.Adam(student.parameters(), lr=s.student_lr)
        self.bank_inputs: list[Tensor] = []
        self.bank_logits: list[Tensor] = []
        self.rounds = 0

    def round(self, keep: bool = True) -> tuple[Tensor, Tensor, dict[str, float]]:
        """One generator step and the student's steps: (the new inputs, the teacher's
        logits on them, the generator's loss terms); ``keep``: into the memory bank."""
        s = self.settings
        self.generator.train()
        z = torch.randn(self.batch_size, s.latent, generator=self.random).to(self.device)
        classes = None
        if s.conditional:
            classes = torch.randint(self.num_classes, (self.batch_size,), generator=self.random).to(
                self.device
            )
        watch = BatchNormInputs(self.teacher)
        try:
            inputs = shift_and_flip(self.generator(z, classes), s.jitter, s.flip, self.random)
            teacher_logits = self.teacher(inputs)
            bn = watch.loss(s.first_bn_multiplier)
        finally:
            watch.remove()
        was_training = self.student.training
        self.student.eval()
        student_logits = self.student(inputs)
        self.student.train(was_training)
        if classes is not None:
            cls = F.cross_entropy(teacher_logits, classes)
        else:
            cls = one_hot_loss(teacher_logits) + s.entropy_weight * information_entropy_loss(
                teacher_logits
            )
        terms = {
            "bn": s.bn_weight * bn,
            "cls": cls,
            "tv": s.tv_weight * total_variation(inputs),
            "adversarial": -s.adversarial_weight
            * disagreement(student_logits, teacher_logits, s.disagreement),
        }
        self.generator_optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()  # type: ignore[union-attr]
        self.generator_optimizer.step()
        inputs, teacher_logits = inputs.detach(), teacher_logits.detach()
        if keep:
            self.bank_inputs.append(inputs)
            self.bank_logits.append(teacher_logits)
        self._teach_student(inputs, teacher_logits)
        self.rounds += 1
        return inputs, teacher_logits, {k: float(v.detach()) for k, v in terms.items()}

    def kept_batch(self) -> tuple[Tensor, Tensor]:
        """``rounds_per_batch`` rounds, the last one's inputs kept in the memory bank: (the
        kept inputs, the teacher's logits on them)."""
        for _ in range(self.settings.rounds_per_batch - 1):
            self.round(keep=False)
        inputs, logits, _ = self.round()
        return inputs, logits

    def _teach_student(self, inputs: Tensor, teacher_logits: Tensor) -> None:
        s = self.settings
        self.student.train()
        if len(self.bank_inputs) > 1:  # one tensor each: concatenated once per kept batch
            self.bank_inputs = [torch.cat(self.bank_inputs)]
            self.bank_logits = [torch.cat(self.bank_logits)]
        bank = (
            (self.bank_inputs[0], self.bank_logits[0])
            if self.bank_inputs
            else (inputs, teacher_logits)
        )
        for step in range(s.student_steps):
            if step:  # the newest batch first, then draws from the whole bank
                rows = torch.randint(len(bank[0]), (self.batch_size,), generator=self.random)
                inputs, teacher_logits = bank[0][rows], bank[1][rows]
            loss = kl(self.student(inputs), teacher_logits, temperature=s.temperature)
            self.student_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.student_optimizer.step()

    def load_bank(self, inputs: Tensor, teacher_logits: Tensor) -> None:
        """Refill the memory bank (on resume, from the shards written so far)."""
        self.bank_inputs = [inputs.to(self.device)]
        self.bank_logits = [teacher_logits.to(self.device)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "student": self.student.state_dict(),
            "student_optimizer": self.student_optimizer.state_dict(),
            "random": self.random.get_state(),
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.student.load_state_dict(state["student"])
        self.student_optimizer.load_state_dict(state["student_optimizer"])
        self.random.set_state(state["random"])
        self.rounds = int(state["rounds"])
