"""The training loop on Hugging Face Accelerate (``Distiller``) and what it stands on:
settings and LR schedules (``config``), checkpoints (``checkpoint``), evaluation metrics
(``evaluation``), the run's state and metrics file (``state``), callbacks, processes
(``distributed``) and the progress bar."""

from distill.training.callbacks import Callback, StepClock
from distill.training.config import TrainConfig
from distill.training.engine import Distiller
from distill.training.state import FitResult

__all__ = ["Callback", "Distiller", "FitResult", "StepClock", "TrainConfig"]
