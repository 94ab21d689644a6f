"""Which process writes: under ``accelerate launch`` or ``torchrun`` every process runs the
same recipe, and files are written by the main process alone while the others wait.

Without CUDA the processes talk over gloo on the CPU: Accelerate only sees a CPU launch as
distributed when told ``cpu=True``, so ``state()`` (and the engine) say so whenever no GPU
is present."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import PartialState

T = TypeVar("T")


def no_accelerator() -> bool:
    """Neither CUDA nor Apple's MPS: the processes (if several) run on the CPU."""
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available()))


def state() -> PartialState:
    """Accelerate's process state (one per process), on the CPU when there is no GPU."""
    return PartialState(cpu=no_accelerator())


def process_index() -> int:
    return state().process_index


def num_processes() -> int:
    return state().num_processes


def is_main_process() -> bool:
    return state().is_main_process


def wait_for_everyone() -> None:
    state().wait_for_everyone()


def on_main(write: Callable[[], T]) -> T | None:
    """Run ``write`` on the main process only, then let every process continue together;
    its result on the main process, None elsewhere."""
    result = write() if is_main_process() else None
    wait_for_everyone()
    return result
