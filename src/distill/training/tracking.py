"""Experiment tracking through Accelerate's trackers (``train.log_with``).

Every metrics row the engine writes to ``metrics.jsonl`` (the loss and each term's,
``weight/<term>``, ``temperature/<term>``, ``lr``, ``grad_norm``, ``samples_per_s`` and
the validation metrics as ``val/<name>``) also goes to each tracker, at its step. The
tracker files live in the run directory: TensorBoard's event files under
``<run_dir>/tracking``, Aim's repository there too, MLflow's artifacts under
``<run_dir>/mlruns`` (its runs and metrics in MLflow's tracking store:
``MLFLOW_TRACKING_URI``, else MLflow's default); W&B writes where ``WANDB_DIR`` says
(``WANDB_MODE=offline`` keeps it local). A resumed run drops TensorBoard's events after
its checkpoint's step, so a step is never shown twice there.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

# tracker -> (the module it imports, the pip package that provides it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "aim": ("aim", "aim"),
}


def missing_packages(names: list[str]) -> list[str]:
    """One line per tracker in ``names`` whose package is not installed, with the fix."""
    return [
        f"{name} needs the {package} package: pip install {package}"
        for name in names
        for module, package in [TRACKERS[name]]
        if importlib.util.find_spec(module) is None
    ]


class Trackers:
    """The run's trackers (``names``: checked installed by ``TrainConfig``), started at
    ``start_step`` (a resumed run's step) and finished on leaving the ``with`` block, also
    when training fails (what was logged stays)."""

    def __init__(
        self, names: list[str], run_dir: Path | None, config: dict[str, Any], start_step: int = 0
    ) -> None:
        self.trackers: list[Any] = []
        if not names:
            return
        if run_dir is None:
            raise ValueError("log_with needs run_dir: the trackers write their files there")
        self.trackers = [make_tracker(name, Path(run_dir), start_step) for name in names]
        scalars = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        for tracker in self.trackers:
            tracker.start()
            if start_step == 0:
                tracker.store_init_configuration(scalars)

    def log(self, row: dict[str, Any]) -> None:
        """A metrics row (with its ``step``) to every tracker; a validation row's
        ``epoch`` is the training row's of that step already."""
        validation = any(name.startswith("val/") for name in row)
        values = {
            k: v
            for k, v in row.items()
            if k != "step" and not (validation and k == "epoch") and isinstance(v, (int, float))
        }
        for tracker in self.trackers:
            tracker.log(values, step=row["step"])

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        for tracker in self.trackers:
            tracker.finish()


def make_tracker(name: str, run_dir: Path, start_step: int) -> Any:
    from accelerate import tracking

    project, run = run_dir.resolve().parent.name, run_dir.name
    if name == "tensorboard":
        purge = {"purge_step": start_step + 1} if start_step else {}  # after the checkpoint
        return tracking.TensorBoardTracker("tracking", run_dir, **purge)
    if name == "wandb":
        return tracking.WandBTracker(project, name=run)
    if name == "mlflow":
        return tracking.MLflowTracker(project, str(run_dir / "mlruns"), run_name=run)
    return tracking.AimTracker(run, str(run_dir / "tracking"))
