"""Teachers: anything that answers a batch with a ``TeacherOutput`` and never trains.

``Module`` (a frozen model), ``CrossTokenizer`` (a language model with its own tokenizer),
``Ensemble`` (several teachers combined or routed), ``Served`` (a language model on an
inference server, read through its prompt log-probs; ``RoutedServed``: several, row by row), ``EMA``
(the moving average of the student, for self-distillation), ``Cached`` (a teacher's
outputs read back from a teacher cache) and ``ZeroShotAnswers`` (a CLIP teacher read from
its cache of image embeddings)."""

from distill.outputs import TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.cached import Cached
from distill.teachers.cross_tokenizer import CrossTokenizer
from distill.teachers.ema import EMA, ema_momentum
from distill.teachers.ensemble import Ensemble, EnsembleModel
from distill.teachers.kinds import TeacherKind
from distill.teachers.module import Module
from distill.teachers.served import RoutedServed, Served, is_remote
from distill.teachers.zero_shot import ZeroShotAnswers

__all__ = [
    "EMA",
    "Cached",
    "CrossTokenizer",
    "Ensemble",
    "EnsembleModel",
    "Module",
    "RoutedServed",
    "Served",
    "Teacher",
    "TeacherKind",
    "TeacherOutput",
    "ZeroShotAnswers",
    "ema_momentum",
    "is_remote",
]
