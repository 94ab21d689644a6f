"""Which process writes: under ``accelerate launch`` or ``torchrun`` every process runs the
same recipe, and files are written by the main process alone while the others wait.

Without CUDA the processes talk over gloo on the CPU: Accelerate only sees a CPU launch as
distributed when told ``cpu=True``, so ``state()`` (and the engine) say so whenever no GPU
is present."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from torch import nn

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


def make_accelerator(cpu: bool = False, mixed_precision: str = "no") -> Accelerator:
    """An ``Accelerator`` with these settings, on the CPU when asked or when there is no GPU
    (which Accelerate needs to hear to launch over gloo).

    Accelerate keeps one global state per process; a script that trains a teacher in
    float32 and then a student in bf16 needs a fresh one. That reset is only done without
    a distributed launch, where the launcher's settings must win."""
    shared = AcceleratorState._shared_state
    if shared and shared.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu or no_accelerator(), mixed_precision=mixed_precision)


def prepare_student(
    accelerator: Accelerator, student: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """``student`` and ``optimizer`` prepared for the processes. A student with
    ``unused_parameters = True`` (a self-supervised network: its classifier takes no part
    in feature learning, its heads none in the label-only baseline) is wrapped with DDP's
    ``find_unused_parameters``, which costs a walk of the graph per step."""
    if getattr(student, "unused_parameters", False):
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
    return accelerator.prepare(student, optimizer)


@contextlib.contextmanager
def process_group_ended() -> Iterator[None]:
    """Under a launcher, stop the process group when the block ends, and end a process that
    finished cleanly right there. Left to the interpreter's own exit, gloo's threads may
    abort (``terminate called without an active exception``) a process whose work is done,
    which the launcher reports as a failed run; a failure still propagates as usual."""
    clean = False
    try:
        yield
        clean = True
    except SystemExit as stop:
        clean = stop.code in (None, 0)
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            if clean:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
