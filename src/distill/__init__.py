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
from distill.errors import DistillError
from distill.methods import Cohort, MultiView, OnPolicy, dino_objective, mutual_objective
from distill.objective import LossInputs, Objective, Term, default_objective
from distill.outputs import TeacherOutput, TopK
from distill.taps import TapError, Taps
from distill.training import Callback, Distiller, FitResult, TrainConfig

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "Cohort",
    "DistillError",
    "Distiller",
    "FitResult",
    "LossInputs",
    "MultiView",
    "Objective",
    "OnPolicy",
    "TapError",
    "Taps",
    "TeacherOutput",
    "Term",
    "TopK",
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
