"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a directory ``<run_dir>/checkpoints/step_<N>/`` holding
``student.safetensors``, ``projectors.safetensors`` (when the objective has projectors),
``trainer_state.pt`` (optimizer, LR scheduler, RNG states; read back with
``torch.load(weights_only=True)``), ``state.json`` (step, data position, best metric, the
settings it was trained with) and ``checksums.json`` (the SHA-256 of each file, written
last). It is written to a temporary directory (``step_<N>.tmp``, never listed as a
checkpoint) and renamed, so a crash never leaves half of one; a checkpoint whose files do
not match their checksums is refused, and resuming falls back to the one before it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from distill.errors import CheckpointError
from distill.models.lora import adapter_state, has_adapters, is_adapter_key
from distill.paths import CHECKSUMS_FILE, fsync_dir, verify_checksums, write_checksums

CHECKPOINTS = "checkpoints"
BEST_DIR = "best"
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
    """Save a module's parameters and buffers as safetensors (tied weights handled); of a
    model with LoRA adapters only the adapters (its other weights are frozen)."""
    if has_adapters(module):
        save_file(adapter_state(module), str(path))
    else:
        save_model(module, str(path))


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into ``module``; a file that does not fit it (other names
    or shapes) or does not parse is a ``CheckpointError`` naming the file."""
    try:
        missing, unexpected = load_model(module, str(path), strict=False)
    except (SafetensorError, RuntimeError) as error:  # damaged, or other tensor shapes
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = " ".join(lines[:2]) or repr(error)
        raise CheckpointError(
            f"{path}: cannot be loaded into {type(module).__name__} ({reason}); was it saved "
            "from the same architecture, and is the file whole?"
        ) from None
    if has_adapters(module):  # a file of adapters: the frozen weights are the model's own
        missing = [name for name in missing if is_adapter_key(name)]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {type(module).__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; was it saved from the same architecture?"
        )


@dataclass
class Trainables:
    """What a checkpoint restores besides the run's position: the student's and the
    projectors' weights, the optimizer and LR scheduler, the weights of a teacher that
    changes during training (an EMA) and the buffers of losses that keep state (DINO's
    centre)."""

    student: nn.Module
    projectors: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    teacher_state: nn.Module | None = None
    loss_state: nn.Module | None = None


def save_checkpoint(directory: Path, parts: Trainables, state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (a temporary folder renamed into place)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(parts.student, tmp / STUDENT_FILE)
    if parts.teacher_state is not None:
        save_weights(parts.teacher_state, tmp / TEACHER_STATE_FILE)
    if parts.loss_state is not None and _has_state(parts.loss_state):
        save_weights(parts.loss_state, tmp / LOSS_STATE_FILE)
    if _has_state(parts.projectors):
        save_weights(parts.projectors, tmp / PROJECTORS_FILE)
    torch.save(
        {
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "rng": capture_rng(),
        },
        tmp / TRAINER_FILE,
    )
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    write_checksums(tmp, [p.name for p in tmp.iterdir()])
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    fsync_dir(directory.parent)
    return directory


def load_checkpoint(directory: Path, parts: Trainables) -> dict[str, Any]:
    """Verify, then load weights and optimizer/scheduler state; returns state.json and the
    RNG states. A file that differs from its checksum is a ``CheckpointError`` naming it,
    raised before anything is loaded."""
    directory = Path(directory)
    if not (directory / STATE_FILE).exists():
        raise FileNotFoundError(
            f"{directory} is not a distill checkpoint (no {STATE_FILE}); pass a "
            f"'{CHECKPOINTS}/step_N' directory or a run directory that has one"
        )
    damaged = [name for name in verify_checksums(directory) if name != CHECKSUMS_FILE]
    if damaged:
        raise CheckpointError(
            f"{directory / damaged[0]}: differs from the checksum recorded when it was written "
            "(the file is corrupt or was changed)"
        )
    load_weights(parts.student, directory / STUDENT_FILE)
    if parts.teacher_state is not None:
        if not (directory / TEACHER_STATE_FILE).exists():
            raise FileNotFoundError(
                f"{directory} holds no {TEACHER_STATE_FILE}: it was written without the moving "
                "teacher this run has; resume with the teacher the checkpoint was made with"
            )
        load_weights(parts.teacher_state, directory / TEACHER_STATE_FILE)
    if parts.loss_state is not None and _has_state(parts.loss_state):
        if not (directory / LOSS_STATE_FILE).exists():
            raise FileNotFoundError(
                f"{directory} holds no {LOSS_STATE_FILE}: it was written without the stateful "
                "loss (e.g. DINO's centre) this run's objective has; resume with the objective "
                "the checkpoint was made with"
            )
        load_weights(parts.loss_state, directory / LOSS_STATE_FILE)
    if (directory / PROJECTORS_FILE).exists():
        load_weights(parts.projectors, directory / PROJECTORS_FILE)
    trainer = torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)
    parts.optimizer.load_state_dict(trainer["optimizer"])
    parts.scheduler.load_state_dict(trainer["scheduler"])
    state = json.loads((directory / STATE_FILE).read_text())
    state["rng"] = trainer["rng"]
    return state


def resume_candidates(resume: bool | str | Path, run_dir: Path | None) -> list[Path]:
    """The checkpoints ``fit(resume=...)`` may continue from, newest first: with ``True``
    those of ``run_dir`` (none yet: an empty list), else the checkpoint given, or those of
    the run directory given."""
    if resume is True:
        if run_dir is None:
            raise ValueError("resume=True needs run_dir=; or pass the checkpoint's path")
        return list_checkpoints(run_dir)[::-1]
    path = Path(resume)
    if (path / STATE_FILE).exists():
        return [path]
    found = list_checkpoints(path)[::-1]
    return found or [path]  # not a checkpoint: load_checkpoint says so


# what a damaged or unreadable checkpoint raises while it is loaded
UNREADABLE = (CheckpointError, OSError, RuntimeError, ValueError, EOFError, SafetensorError)


def load_intact(
    candidates: list[Path],
    parts: Trainables,
    fingerprint: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Load the newest of ``candidates`` that is intact, saying which were passed over; a
    checkpoint trained under another ``fingerprint`` (the settings that change training)
    is refused, naming what differs."""
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path, parts)
        except FileNotFoundError:
            raise
        except UNREADABLE as error:
            errors.append(f"{path}: {error}")
            log(f"checkpoint {path} is unreadable ({error}); trying the one before it")
            continue
        written = state.get("settings")
        if written is not None and written != fingerprint:
            differ = sorted(
                k for k in {*written, *fingerprint} if written.get(k) != fingerprint.get(k)
            )
            details = ", ".join(
                f"{k}: {written.get(k)!r} -> {fingerprint.get(k)!r}" for k in differ
            )
            raise CheckpointError(
                f"{path} was trained with other settings ({details}); resume with the same "
                "settings, or start over (distill run --restart; fit without resume)"
            )
        if errors:
            log(f"resuming from {path}, the newest intact checkpoint")
        return state
    raise CheckpointError(
        f"no intact checkpoint to resume from: {'; '.join(errors)}; delete "
        f"{candidates[0].parent} to start over (distill run --restart does)"
    )


class BestWeights:
    """The best student so far (by the validation metric): ``best/student.safetensors`` in
    the run directory, written by the main process, or a copy in memory without one."""

    def __init__(self, run_dir: Path | None, is_main: bool) -> None:
        self.path = None if run_dir is None else run_dir / BEST_DIR / STUDENT_FILE
        self.is_main = is_main
        self.in_memory: dict[str, torch.Tensor] = {}

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    def save(self, model: nn.Module) -> None:
        if self.path is None:
            weights = model.state_dict()
            self.in_memory = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        elif self.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(model, self.path)

    def restore(self, model: nn.Module) -> None:
        if self.path is None:
            model.load_state_dict(self.in_memory)
        else:
            load_weights(model, self.path)


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first (``step_<N>.tmp`` folders, left by a
    crash while one was written, are not checkpoints)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.glob("step_*")
        if p.name.removeprefix("step_").isdigit() and (p / STATE_FILE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clear_run(run_dir: Path, log: Callable[[str], None]) -> None:
    """Remove an earlier run's checkpoints and best weights from ``run_dir`` (a fresh run
    there would otherwise keep the earlier run's higher-numbered checkpoints)."""
    earlier = [Path(run_dir) / CHECKPOINTS, Path(run_dir) / BEST_DIR]
    if any(path.exists() for path in earlier):
        log(f"{run_dir}: a new run replaces the earlier run's checkpoints")
        for path in earlier:
            shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
