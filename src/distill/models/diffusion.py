"""Diffusion models from Hugging Face ``diffusers``: a UNet and its noise schedule.

- ``load_hf_diffusers("hf-diffusers:<hub id or folder>")``: a pipeline folder (``unet/``
  and ``scheduler/``, as ``save_pretrained`` writes them) or a UNet folder with a
  ``scheduler_config.json`` beside it: the UNet, the schedule's ``alphas_cumprod`` and the
  prediction type it was trained with.
- ``unet_from_config(args)``: a randomly initialised ``UNet2DModel`` (its config fields as
  ``args``), to be trained by a recipe.
- ``prompt_embeddings(spec, prompts)``: a text-conditional pipeline's text encoder
  (``text_encoder/`` and ``tokenizer/``) applied to prompts, for a
  ``UNet2DConditionModel``'s ``encoder_hidden_states``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import MissingDependency, ModelError, first_line
from distill.models.hf import load_failure

# schedulers whose noise is the variance-preserving z = α x + σ ε of a discrete ᾱ table
VARIANCE_PRESERVING = {
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
    "LCMScheduler",
    "HeunDiscreteScheduler",
    "DEISMultistepScheduler",
}


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as error:
        raise MissingDependency(
            "diffusion models need diffusers: pip install 'distill[diffusion]'"
        ) from error
    return diffusers


def schedule_of(config: dict[str, Any], where: str) -> tuple[Tensor, str]:
    """(``alphas_cumprod``, prediction type) of a scheduler config; a scheduler whose noise
    is not variance-preserving, or whose table reaches ᾱ = 0, is refused naming it."""
    diffusers = _diffusers()
    kind = config.get("_class_name", "DDPMScheduler")
    if kind not in VARIANCE_PRESERVING:
        raise ModelError(
            f"{where}: scheduler {kind} is not a variance-preserving schedule of a discrete "
            f"alphas_cumprod table, which progressive distillation inverts; use one of "
            f"{', '.join(sorted(VARIANCE_PRESERVING))}"
        )
    if config.get("rescale_betas_zero_snr"):
        raise ModelError(f"{where}: a zero-terminal-SNR schedule (ᾱ_T = 0) is not supported yet")
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    scheduler = diffusers.DDPMScheduler.from_config(fields)
    return scheduler.alphas_cumprod.double(), str(config.get("prediction_type", "epsilon"))


def load_hf_diffusers(spec: str) -> tuple[nn.Module, Tensor, str]:
    """``hf-diffusers:<hub id or folder>``: (UNet, ``alphas_cumprod``, prediction type)."""
    diffusers = _diffusers()
    if not spec.startswith("hf-diffusers:"):
        raise ModelError(f"a diffusers model is named hf-diffusers:<id or folder>, got {spec!r}")
    source = spec.removeprefix("hf-diffusers:")
    folder = Path(source)
    unet_sub = "unet" if not folder.exists() or (folder / "unet").is_dir() else None
    try:
        config = diffusers.UNet2DModel.load_config(source, subfolder=unet_sub)
        kind = config.get("_class_name", "UNet2DModel")
        if kind not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ModelError(f"{spec}: {kind} is not a UNet2DModel or UNet2DConditionModel")
        unet = getattr(diffusers, kind).from_pretrained(source, subfolder=unet_sub)
        scheduler_config = diffusers.DDPMScheduler.load_config(
            source, subfolder="scheduler" if unet_sub else None
        )
    except ModelError:
        raise
    except (OSError, ValueError) as error:  # no such folder, no network, not a UNet
        raise load_failure(spec, source, error) from None
    alphas_cumprod, prediction = schedule_of(scheduler_config, spec)
    return unet, alphas_cumprod, prediction


def unet_from_config(args: dict[str, Any]) -> nn.Module:
    """A ``UNet2DModel`` with random weights; ``args`` are its config fields."""
    diffusers = _diffusers()
    fields = {
        key: tuple(value) if isinstance(value, list) else value for key, value in args.items()
    }
    try:
        return diffusers.UNet2DModel(**fields)
    except (TypeError, ValueError) as error:
        raise ModelError(f"diffusers:unet2d args {args}: {error}") from None


def default_schedule(steps: int = 1000) -> Tensor:
    """DDPM's linear β schedule (1e-4 to 0.02) over ``steps``: its ``alphas_cumprod``."""
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def prompt_embeddings(spec: str, prompts: list[str]) -> Tensor:
    """``encoder_hidden_states`` (len(prompts), L, D) of ``prompts`` by the text encoder of
    the pipeline ``hf-diffusers:<id or folder>`` (padded to the longest prompt)."""
    import transformers

    source = spec.removeprefix("hf-diffusers:")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        encoder = transformers.AutoModel.from_pretrained(source, subfolder="text_encoder")
    except OSError as error:
        raise ModelError(
            f"{spec}: a text-conditional UNet needs its pipeline's text_encoder/ and "
            f"tokenizer/: {first_line(error)}"
        ) from None
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = encoder.eval()(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return out.last_hidden_state.float()
