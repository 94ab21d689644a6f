"""A classifier student as a self-contained folder, the way Hugging Face model repositories
hold weights: ``model.safetensors`` and a ``config.json`` that says how to build the
model (``model``, ``args``, ``num_classes``, ``in_shape``). Language-model students are
Hugging Face folders already (``from_pretrained``).

    model = load_classifier("runs/fashion_mnist_kd/student")   # or a downloaded repository
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from distill.errors import CheckpointError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LIBRARY = "distill"


def save_classifier(
    model: nn.Module,
    folder: Path,
    spec: str,
    args: dict[str, Any],
    num_classes: int,
    in_shape: Sequence[int],
) -> Path:
    """Write ``model``'s weights and how to build it (``spec``: e.g. ``zoo:cnn``)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / WEIGHTS))
    config = {
        "library_name": LIBRARY,
        "model": spec,
        "args": args,
        "num_classes": num_classes,
        "in_shape": list(in_shape),
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path) -> nn.Module:
    """The classifier a ``save_classifier`` folder holds, in eval mode."""
    from distill.models import build_model

    folder = Path(folder)
    path = folder / CONFIG
    if not path.exists():
        raise CheckpointError(f"{folder}: no {CONFIG}; is it a folder distill push wrote?")
    config = json.loads(path.read_text())
    if config.get("library_name") != LIBRARY:
        raise CheckpointError(f"{path}: not a distill classifier (library_name is not distill)")
    model = build_model(config["model"], config["num_classes"], config["in_shape"], config["args"])
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / WEIGHTS}: weights do not fit {config['model']}: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.eval()
