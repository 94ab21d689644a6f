"""The data sections every kind of run builds on: ``DataSection``, what ``Recipe.data`` is
before a kind of run narrows it, and ``DataSpec``, images with labels (each image task adds
its own fields to it in its folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from torch.utils.data import Dataset

from distill.data import DATASETS, load_dataset
from distill.recipes.specs import Strict

DatasetName = Literal[DATASETS]  # type: ignore[valid-type]


class DataSection(Strict):
    """A recipe's data: each kind of run narrows it to its own section (images with labels,
    text in blocks, ...), which says what the rows are, how they are split and batched."""


class DataSpec(DataSection):
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
    transfer_classes: list[int] | None = Field(
        None,
        description="with labeled: keep only these classes in the unlabelled transfer set "
        "(a biased pool, as when transfer data differ from deployment; distill doctor flags it)",
    )
    batch_size: int = Field(128, ge=1, description="examples per training batch")
    eval_batch_size: int = Field(1024, ge=1, description="examples per measuring batch")
    num_workers: int = Field(0, ge=0, description="data-loading processes; 0: in the main one")
    split_seed: int = Field(0, description="the validation split and the labelled subset")

    def load(self) -> tuple[Dataset, Dataset, int]:
        """(train, test, number of classes) of ``dataset`` as this section names it."""
        return load_dataset(
            self.dataset,
            self.path,
            allow_download=self.download,
            image_size=self.image_size,
            columns=self.columns,
            splits=self.splits,
        )

    @model_validator(mode="after")
    def _transfer_needs_labeled(self) -> DataSpec:
        if self.transfer_classes is not None and self.labeled is None:
            raise ValueError("transfer_classes shapes the transfer set: set labeled as well")
        return self
