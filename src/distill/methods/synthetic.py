"""A transfer set synthesised from the teacher, stored so it is made once.

``write_synthetic_set`` generates ``examples`` inputs in batches, each batch a safetensors
shard, with ``provenance.json`` (method, teacher, settings, seed) and ``checksums.json``:
by DeepInversion (``InversionSettings``: each batch optimised from noise, targets cycling
through the classes) or by a generator (``GeneratorSettings``: each batch one round of
``methods.generator``, the generator and the student learning alongside it saved with
every shard in ``generator_state.pt``). Rerun, it keeps every intact shard and makes the
missing or damaged ones (saying so), so a killed generation continues; a folder made with
other settings is refused. ``SyntheticSet`` reads the shards back, checksums verified, as
unlabelled rows ``(input, -100, {"example_id": i})``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from distill.errors import CacheError
from distill.methods.generator import GeneratorKD, GeneratorSettings
from distill.methods.inversion import InversionSettings, deep_inversion
from distill.paths import (
    CHECKSUMS_FILE,
    atomic_save,
    read_json,
    sha256_file,
    verify_checksums,
    write_json,
)
from distill.training.progress import TrainingProgress

PROVENANCE_FILE = "provenance.json"
GENERATOR_STATE = "generator_state.pt"
UNLABELLED = -100


def shard_name(index: int) -> str:
    return f"batch_{index:05d}.safetensors"


def write_synthetic_set(
    teacher: nn.Module,
    folder: Path,
    *,
    examples: int,
    shape: tuple[int, ...],
    num_classes: int,
    teacher_id: str,
    settings: InversionSettings | GeneratorSettings | None = None,
    batch_size: int = 64,
    seed: int = 0,
    student: nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Make (or finish) the synthetic set in ``folder``; ``teacher_id`` names the teacher
    in the provenance (a store digest, say). With ``GeneratorSettings`` the ``student``
    (required) learns alongside the generator; with ``InversionSettings`` a ``student``
    makes it Adaptive DeepInversion."""
    settings = settings or InversionSettings()
    generating = isinstance(settings, GeneratorSettings)
    if generating and student is None:
        raise ValueError("a generator is trained against a student: pass student")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    provenance = {
        "method": "generator"
        if generating
        else "adaptive_deep_inversion"
        if student is not None
        else "deep_inversion",
        "teacher": teacher_id,
        "settings": dataclasses.asdict(settings),
        "examples": examples,
        "shape": list(shape),
        "num_classes": num_classes,
        "batch_size": batch_size,
        "seed": seed,
    }
    provenance = json.loads(json.dumps(provenance))  # as read back: tuples become lists
    written = folder / PROVENANCE_FILE
    if written.exists():
        earlier = read_json(written, CacheError)
        changed = sorted(k for k in provenance if earlier.get(k) != provenance[k])
        if changed:
            raise CacheError(
                f"{folder} holds synthetic inputs made with other {', '.join(changed)}; "
                "delete the folder or choose another one"
            )
    else:
        write_json(written, provenance, indent=2)
    shards = math.ceil(examples / batch_size)
    sums = (
        read_json(folder / CHECKSUMS_FILE, CacheError) if (folder / CHECKSUMS_FILE).exists() else {}
    )
    intact = [
        (folder / shard_name(i)).is_file()
        and sums.get(shard_name(i)) == sha256_file(folder / shard_name(i))
        for i in range(shards)
    ]
    rounds = None
    if generating:
        assert isinstance(settings, GeneratorSettings) and student is not None
        rounds = _resume_generator(
            GeneratorKD(teacher, student, shape, num_classes, settings, batch_size, seed),
            folder,
            sums,
            intact,
            log,
        )
    with TrainingProgress(shards, enabled=progress) as bar:
        for index in range(shards):
            name = shard_name(index)
            path = folder / name
            if intact[index]:
                bar.update(index + 1)
                continue
            if path.exists():
                log(f"{path}: damaged (checksum differs); generating it again")
            start = index * batch_size
            count = min(batch_size, examples - start)
            if rounds is not None:
                inputs, logits = rounds.kept_batch()
                tensors = {"inputs": inputs[:count], "targets": logits[:count].argmax(dim=-1)}
                tensors["teacher_logits"] = logits[:count]
            else:
                targets = (torch.arange(count) + start) % num_classes
                inputs, _ = deep_inversion(
                    teacher,
                    targets,
                    shape,
                    settings,  # type: ignore[arg-type]
                    student=student,
                    seed=seed * 1_000_003 + index,
                )
                tensors = {"inputs": inputs, "targets": targets}
            tensors = {k: v.cpu().contiguous() for k, v in tensors.items()}
            atomic_save(path, lambda p, t=tensors: save_file(t, str(p)))
            sums[name] = sha256_file(path)  # the new shard only: the others were hashed
            if rounds is not None:  # where a killed generation continues
                state = folder / GENERATOR_STATE
                atomic_save(state, lambda p, r=rounds: torch.save(r.state_dict(), p))
                sums[GENERATOR_STATE] = sha256_file(state)
            write_json(folder / CHECKSUMS_FILE, sums)
            bar.update(index + 1)
    return folder


def _resume_generator(
    rounds: GeneratorKD,
    folder: Path,
    sums: dict[str, str],
    intact: list[bool],
    log: Callable[[str], None],
) -> GeneratorKD:
    """The generator where a killed generation left it, its memory bank refilled from the
    intact shards; a missing or damaged state starts the generator afresh (said)."""
    if not any(intact):
        return rounds
    state = folder / GENERATOR_STATE
    if state.is_file() and sums.get(GENERATOR_STATE) == sha256_file(state):
        rounds.load_state_dict(torch.load(state, weights_only=True))
        log(f"{folder}: the generator continues after round {rounds.rounds}")
    else:
        log(f"{state}: missing or damaged; the generator starts again (kept shards stay)")
    parts = [load_file(str(folder / shard_name(i))) for i, ok in enumerate(intact) if ok]
    rounds.load_bank(
        torch.cat([p["inputs"] for p in parts]), torch.cat([p["teacher_logits"] for p in parts])
    )
    return rounds


class SyntheticSet(Dataset):
    """The shards of a synthetic set, verified, as unlabelled rows (the teacher labels
    them); ``targets`` keeps the classes they were made for."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / PROVENANCE_FILE).exists():
            raise CacheError(f"{folder} holds no synthetic set ({PROVENANCE_FILE} is missing)")
        damaged = verify_checksums(folder)
        if damaged:
            raise CacheError(
                f"{folder}: {', '.join(damaged)} missing or damaged (checksum differs); "
                "rerun the generation to make them again"
            )
        self.provenance: dict[str, Any] = read_json(folder / PROVENANCE_FILE, CacheError)
        shards = math.ceil(self.provenance["examples"] / self.provenance["batch_size"])
        parts = [load_file(str(folder / shard_name(i))) for i in range(shards)]
        self.inputs: Tensor = torch.cat([p["inputs"] for p in parts])
        self.targets: Tensor = torch.cat([p["targets"] for p in parts])
        state = folder / GENERATOR_STATE
        self.student_weights: dict[str, Tensor] | None = (
            torch.load(state, weights_only=True)["student"] if state.is_file() else None
        )  # a generator's: the student that learned alongside it

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, int, dict[str, int]]:
        return self.inputs[index], UNLABELLED, {"example_id": index}
