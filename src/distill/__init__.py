"""distill: knowledge distillation for PyTorch.

import distill
from distill import losses, teachers
result = distill.Distiller(
    student=student,
    teacher=teachers.Module(teacher_model),
    objective=distill.Objective(
        ce=distill.Term(losses.cross_entropy, weight=0.1),
        kd=distill.Term(losses.kl, weight=0.9, temperature=4.0),
    ),
).fit(train_loader, eval_loader=val_loader, epochs=10)
"""

from distill import losses, schedules, teachers
from distill.data import train_val_split
from distill.engine import Callback, Distiller, FitResult, TrainConfig, default_objective
from distill.mutual import Cohort, mutual_objective
from distill.objective import LossInputs, Objective, Term
from distill.on_policy import OnPolicy
from distill.selfsup import MultiView, dino_objective
from distill.taps import TapError, Taps

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "Cohort",
    "Distiller",
    "FitResult",
    "LossInputs",
    "MultiView",
    "Objective",
    "OnPolicy",
    "TapError",
    "Taps",
    "Term",
    "TrainConfig",
    "__version__",
    "default_objective",
    "dino_objective",
    "losses",
    "mutual_objective",
    "schedules",
    "teachers",
    "train_val_split",
]
