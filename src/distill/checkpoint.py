"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>/`` holding
``student.safetensors``, ``projectors.safetensors`` (when the objective has projectors),
``trainer_state.pt`` (optimizer, LR scheduler, RNG states; read back with
``torch.load(weights_only=True)``) and ``state.json`` (step, data position, best metric).
It is written to a temporary directory and renamed, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

CHECKPOINTS = "checkpoints"
STUDENT_FILE = "student.safetensors"
TEACHER_STATE_FILE = "teacher_state.safetensors"
LOSS_STATE_FILE = "loss_state.safetensors"
PROJECTORS_FILE = "projectors.safetensors"
TRAINER_FILE = "trainer_state.pt"
STATE_FILE = "state.json"


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(module: nn.Module, path: Path) -> None:
    """Save a module's parameters and buffers as safetensors (tied weights handled)."""
    save_model(module, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    missing, unexpected = load_model(module, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit {type(module).__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; was it saved from the same architecture?"
        )


def save_checkpoint(
    directory: Path,
    *,
    student: nn.Module,
    projectors: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    teacher_state: nn.Module | None = None,
    loss_state: nn.Module | None = None,
) -> Path:
    """Write a checkpoint atomically (a temporary folder renamed into place).
    ``teacher_state`` is the weights of a teacher that changes during training (an EMA),
    ``loss_state`` the buffers of losses that keep state (DINO's centre)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(student, tmp / STUDENT_FILE)
    if teacher_state is not None:
        save_weights(teacher_state, tmp / TEACHER_STATE_FILE)
    if loss_state is not None and _has_state(loss_state):
        save_weights(loss_state, tmp / LOSS_STATE_FILE)
    if _has_state(projectors):
        save_weights(projectors, tmp / PROJECTORS_FILE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng(),
        },
        tmp / TRAINER_FILE,
    )
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_checkpoint(
    directory: Path,
    *,
    student: nn.Module,
    projectors: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    teacher_state: nn.Module | None = None,
    loss_state: nn.Module | None = None,
) -> dict[str, Any]:
    """Load weights and optimizer/scheduler state; returns state.json and the RNG states."""
    directory = Path(directory)
    if not (directory / STATE_FILE).exists():
        raise FileNotFoundError(
            f"{directory} is not a distill checkpoint (no {STATE_FILE}); pass a "
            f"'{CHECKPOINTS}/step_N' directory or a run directory that has one"
        )
    load_weights(student, directory / STUDENT_FILE)
    if teacher_state is not None:
        if not (directory / TEACHER_STATE_FILE).exists():
            raise FileNotFoundError(
                f"{directory} holds no {TEACHER_STATE_FILE}: it was written without the moving "
                "teacher this run has; resume with the teacher the checkpoint was made with"
            )
        load_weights(teacher_state, directory / TEACHER_STATE_FILE)
    if loss_state is not None and _has_state(loss_state):
        if not (directory / LOSS_STATE_FILE).exists():
            raise FileNotFoundError(
                f"{directory} holds no {LOSS_STATE_FILE}: it was written without the stateful "
                "loss (e.g. DINO's centre) this run's objective has; resume with the objective "
                "the checkpoint was made with"
            )
        load_weights(loss_state, directory / LOSS_STATE_FILE)
    if (directory / PROJECTORS_FILE).exists():
        load_weights(projectors, directory / PROJECTORS_FILE)
    trainer = torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    state = json.loads((directory / STATE_FILE).read_text())
    state["rng"] = trainer["rng"]
    return state


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
