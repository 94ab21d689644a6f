"""The data sections of a recipe: images and labels (``DataSpec``, with function matching's
mixing, ``MixSpec``) or text in blocks (``TextDataSpec``); ``schema.Recipe.data`` is one of
the two, told apart by ``dataset``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from distill.data import DATASETS
from distill.recipes.private_spec import SyntheticSpec
from distill.recipes.task_specs import CaptionSpec, Strict

DatasetName = Literal[DATASETS]  # type: ignore[valid-type]


class MixSpec(Strict):
    """Function matching (Beyer et al. 2022): every student's training batches are mixed
    (``data.mixing.BatchMix``), teacher and student reading the same mixed input and
    cross-entropy the mixed labels."""

    kind: Literal["mixup", "cutmix"] = Field(
        description="mixup: λ·x + (1 − λ)·x′ with another row x′; cutmix: a box of x′ pasted "
        "into x, λ = 1 − its share; labels mixed by λ"
    )
    alpha: float = Field(1.0, gt=0, description="λ ~ Beta(alpha, alpha)")
    prob: float = Field(1.0, gt=0, le=1, description="the share of batches mixed")


class DataSpec(Strict):
    """Images with labels: a built-in dataset, a folder of class folders or a Hugging Face
    image dataset, split into train / validation / test."""

    dataset: DatasetName = Field(description="the images and their labels")
    path: Path | None = Field(None, description="folder with the files; None: the defaults")
    download: bool = Field(True, description="fetch missing files (torchvision datasets)")
    image_size: int = Field(32, ge=8, description="image_folder and hf_images only")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"image": "image", "label": "label"},
        description="hf_images: the image and label columns",
    )
    splits: tuple[str, str] = Field(("train", "test"), description="hf_images: train, test")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="training rows held out to select the best student"
    )
    labeled: int | None = Field(
        None,
        ge=1,
        description="labelled training examples; the other inputs form a transfer "
        "set that only the teacher labels (None: every example keeps its label)",
    )
    augment: bool = Field(False, description="random crop (padding 4) and horizontal flip")
    mix: MixSpec | None = Field(
        None, description="mixup or cutmix of every student's training batches (function matching)"
    )
    transfer_classes: list[int] | None = Field(
        None,
        description="with labeled: keep only these classes in the unlabelled transfer set "
        "(a biased pool, as when transfer data differ from deployment; distill doctor flags it)",
    )
    batch_size: int = Field(128, ge=1, description="examples per training batch")
    eval_batch_size: int = Field(1024, ge=1, description="examples per measuring batch")
    num_workers: int = Field(0, ge=0, description="data-loading processes; 0: in the main one")
    split_seed: int = Field(0, description="the validation split and the labelled subset")
    domains: dict[str, list[int]] | None = Field(
        None,
        description="domain name -> its classes: a coarse field every example carries, also "
        "in the transfer set, that routes it to its specialised teacher",
    )
    captions: CaptionSpec | None = Field(
        None, description="task: clip: the text side (captions, prompts, text tower)"
    )
    synthetic: SyntheticSpec | None = Field(
        None, description="data-free: the student's transfer set is synthesised from the teacher"
    )

    @model_validator(mode="after")
    def _transfer_needs_labeled(self) -> DataSpec:
        if self.transfer_classes is not None and self.labeled is None:
            raise ValueError("transfer_classes shapes the transfer set: set labeled as well")
        return self


class TextDataSpec(Strict):
    """Text for language-model recipes, split by blocks into train / validation / test."""

    dataset: Literal["text"] = Field(description="text, tokenized and cut into blocks")
    source: str = Field(
        "pydoc",
        description="pydoc (CPython's help topics, offline everywhere), hf:<dataset>[:<split>], "
        "a .txt/.jsonl file or folder, or 'generated': the teacher's answers (generate:)",
    )
    format: Literal["packed", "chat"] = Field(
        "packed", description="packed: plain text in blocks; chat: one conversation per row"
    )
    tokenizer: str | None = Field(
        None, description="hf:<id or dir> to take the tokenizer from; None: the teacher's"
    )
    seq_len: int = Field(128, ge=8, description="tokens per block (row)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked_lm only")
    val_blocks: int = Field(32, ge=1, description="held-out rows that select the best student")
    test_blocks: int = Field(48, ge=1, description="held-out rows the report is measured on")
    max_train_blocks: int | None = Field(None, ge=1, description="at most this many; None: all")
    batch_size: int = Field(8, ge=1, description="blocks per training batch")
    eval_batch_size: int = Field(8, ge=1, description="blocks per measuring batch")
    num_workers: int = Field(0, ge=0, description="data-loading processes; 0: in the main one")
    split_seed: int = Field(0, description="which blocks are held out, and masked_lm's masks")
