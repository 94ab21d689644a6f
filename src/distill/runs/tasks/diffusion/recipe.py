"""The recipe of ``task: diffusion``: the ``diffusion`` section (the rounds of step
distillation of a sampler) and what a diffusion run lacks."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from distill.recipes.schema import DataSpec, Recipe, Strict

NOT_BUILT = "not built for samplers yet"
ONE_SAMPLER = (
    "diffusion distils one teacher sampler; set teacher.model to hf-diffusers:<id or folder>, "
    "or to diffusers:unet2d with args and train"
)
NOT_LM = "for language-model teachers; drop it"


class DiffusionSpec(Strict):
    """``task: diffusion``: progressive distillation of a DDIM sampler (Salimans & Ho, ICLR
    2022): the teacher's ``steps``-step sampler teaches a student of half as many steps,
    which teaches the next, down to ``to_steps``; each round is a stage with the recipe's
    ``train`` budget. Or consistency distillation (``method: consistency``): one student
    learns to map every level of the teacher's ``steps``-step grid to the clean image. A
    teacher the recipe trains uses DDPM's linear schedule over
    ``timesteps`` and predicts ``prediction``; ``guidance`` > 0 bakes classifier-free
    guidance into the first round (the teacher learns with ``class_dropout`` of its classes
    dropped). Samplers are measured on ``samples`` generated images."""

    method: Literal["progressive", "consistency"] = Field(
        "progressive",
        description="progressive: halving rounds; consistency: one consistency model trained "
        "on the teacher's steps-step grid (Song et al. 2023), sampled in 1, 2 or 4 steps",
    )
    ema_momentum: float = Field(0.95, ge=0, lt=1, description="consistency: the target's EMA")
    steps: int = Field(64, ge=2, description="the teacher sampler's DDIM steps")
    to_steps: int = Field(1, ge=1, description="the last student's steps")
    guidance: float = Field(0.0, ge=0, description="classifier-free guidance weight w")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="teacher training: null class")
    timesteps: int = Field(1000, ge=10, description="a trained teacher's schedule length")
    prediction: Literal["v_prediction", "epsilon"] = Field(
        "v_prediction", description="what a trained teacher's network predicts"
    )
    samples: int = Field(1000, ge=10, description="images generated per measured sampler")
    image_size: int = Field(32, ge=8, description="images padded (or resized) to this size")
    classifier: dict[str, Any] = Field(
        default_factory=lambda: {"channels": [32, 64], "hidden": 128},
        description="args of the zoo:cnn trained on the real images, whose features FID reads",
    )
    classifier_epochs: int = Field(2, ge=1, description="epochs that train that classifier")
    prompt: str = Field(
        "a photo of a {name}",
        description="a text-conditional teacher (UNet2DConditionModel): each class's prompt",
    )

    @model_validator(mode="after")
    def _halving(self) -> DiffusionSpec:
        if self.method == "consistency":
            return self
        ratio, rounds = self.steps // self.to_steps, 0
        while ratio > 1 and ratio % 2 == 0:
            ratio, rounds = ratio // 2, rounds + 1
        if self.steps % self.to_steps or ratio != 1 or rounds == 0:
            raise ValueError(
                f"steps {self.steps} does not halve down to to_steps {self.to_steps}: each round "
                "halves the steps, so steps must be to_steps times a power of two (64 → 1)"
            )
        return self


class DiffusionRecipe(Recipe):
    """``task: diffusion``: a sampler's steps distilled (progressive or consistency),
    measured by FID and the domain classifier's accuracy on generated images."""

    lacks: ClassVar[dict[str, str]] = {
        "baseline": "the teacher's own DDIM at fewer steps is measured instead; "
        "set baseline: false",
        "compress": f"compress stages are {NOT_BUILT}; drop compress",
        "export": f"export is {NOT_BUILT}; drop export",
        "cache": f"a teacher cache is {NOT_BUILT}; drop cache",
        "search": f"student search is {NOT_BUILT}; drop search",
        "student.peft": f"LoRA students are {NOT_BUILT}; drop student.peft",
        "teacher.model: ema": ONE_SAMPLER,
        "teacher.model: ensemble": ONE_SAMPLER,
        "teacher.model: served": f"a served teacher is {NOT_LM}",
        "teacher.tokenizer": f"a teacher's own tokenizer is {NOT_LM}",
    }
    example: ClassVar[dict[str, Any]] = {
        "name": "tiny",
        "task": "diffusion",
        "data": {"dataset": "fashion_mnist"},
        "teacher": {"model": "diffusers:unet2d", "args": {}, "train": {"epochs": 1}},
        "student": {"model": "teacher"},
        "diffusion": {"steps": 4, "to_steps": 1},
        "objective": {"pd": {"loss": "progressive_distillation"}},
        "train": {"epochs": 1},
        "baseline": False,
    }

    task: Literal["diffusion"] = Field(description="the kind of run: a sampler's steps distilled")
    data: DataSpec = Field(description="the images the teacher sampler was trained on")
    diffusion: DiffusionSpec = Field(description="the rounds: steps, to_steps, method, ...")

    @model_validator(mode="after")
    def _diffusion_checks(self) -> DiffusionRecipe:
        if self.teacher is None:
            raise ValueError(f"task diffusion: set teacher: {ONE_SAMPLER}")
        if not self.student.copies_teacher:
            raise ValueError(
                "student.model: progressive distillation starts each student as a copy of its "
                "teacher; set student.model: teacher"
            )
        if self.teacher.model == "diffusers:unet2d" and not (
            self.teacher.train or self.teacher.checkpoint
        ):
            raise ValueError(
                "teacher: a diffusers:unet2d teacher starts with random weights; give train "
                "(settings to train it) or checkpoint"
            )
        losses = {term.loss for term in self.objective.values()}
        method = self.diffusion.method
        wanted = (
            "progressive_distillation" if method == "progressive" else "consistency_distillation"
        )
        if losses != {wanted}:
            raise ValueError(
                f"objective: diffusion.method {method} trains with one term {{loss: {wanted}}}, "
                f"got {sorted(losses)}"
            )
        return self
