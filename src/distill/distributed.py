"""Which process writes: under ``accelerate launch`` or ``torchrun`` every process runs the
same recipe, and files are written by the main process alone while the others wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from accelerate import PartialState

T = TypeVar("T")


def process_index() -> int:
    return PartialState().process_index


def num_processes() -> int:
    return PartialState().num_processes


def is_main_process() -> bool:
    return PartialState().is_main_process


def wait_for_everyone() -> None:
    PartialState().wait_for_everyone()


def on_main(write: Callable[[], T]) -> T | None:
    """Run ``write`` on the main process only, then let every process continue together;
    its result on the main process, None elsewhere."""
    result = write() if is_main_process() else None
    wait_for_everyone()
    return result
