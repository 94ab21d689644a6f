"""A rich progress bar for training: steps, loss, samples per second, time left."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Context manager; a no-op when ``enabled`` is false (scripts, non-main ranks)."""

    def __init__(self, total_steps: int, *, enabled: bool = True, completed: int = 0) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self.total, self.completed = total_steps, completed

    def __enter__(self) -> TrainingProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]distill"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("<"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.completed, stats=""
            )
        return self

    def update(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def show(self, loss: float, samples_per_s: float) -> None:
        """The last logged values (the engine reads them from the device every few steps)."""
        if self._progress is not None:
            stats = f"loss {loss:.4f} · {samples_per_s:,.0f} samples/s"
            self._progress.update(self._task, stats=stats)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
