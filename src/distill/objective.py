"""The objective: named, weighted loss terms, each fed by the names of its parameters.

    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.1),
        kd=Term(losses.kl, weight=0.9, temperature=4.0),
        hint=Term(losses.hint, weight=100.0, student="layer2", teacher="layer3"),
    )

A term's loss receives, by parameter name, ``student_logits``, ``teacher_logits``,
``teacher_topk`` (a sparse teacher, from a top-k cache), ``labels``, ``mask``, and, for
feature losses, ``student_features`` / ``teacher_features`` read from the tap paths
``student=`` / ``teacher=``. ``weight`` and ``temperature`` may be numbers or schedules.
The total is ``Σ weight_i(step) · loss_i``; every term is reported separately.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distill.batch import Batch
from distill.losses.logits import cross_entropy, kl
from distill.losses.registry import INPUT_NAMES, inputs_read, loss_parameters
from distill.outputs import IGNORE_INDEX, TeacherOutput, TopK
from distill.projectors import build_projector
from distill.schedules import Constant, Schedule, as_schedule
from distill.teachers.base import Teacher


@dataclass
class LossInputs:
    """Everything a term may read for one batch: one field per name of the loss registry's
    ``INPUT_NAMES``, in its order (a loss reads those its signature names)."""

    student_logits: Tensor | None = None
    teacher_logits: Tensor | None = None
    teacher_topk: TopK | None = None
    labels: Tensor | None = None
    mask: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    text: Tensor | None = None  # the batch's caption embeddings (CLIP-style data)
    example_weight: Tensor | None = None  # a per-example loss weight (diffusion: SNR)
    alignment: Any = None  # a teacher with another tokenizer: how its rows meet the student's


def loss_inputs(
    batch: Batch,
    student_logits: Tensor | None,
    teacher_out: TeacherOutput | None,
    student_features: dict[str, Tensor],
) -> LossInputs:
    """What the terms read for ``batch``: the student's logits and tapped features, the
    teacher's answer (None: no teacher), and the batch's labels, mask and metadata."""
    teacher = teacher_out or TeacherOutput(logits=None)
    return LossInputs(
        student_logits=student_logits,
        teacher_logits=teacher.logits,
        teacher_topk=teacher.topk,
        alignment=teacher.alignment,
        labels=batch.labels,
        mask=batch.mask,
        student_features=student_features,
        teacher_features=teacher.features,
        text=batch.meta.get("text"),
        example_weight=batch.meta.get("example_weight"),
    )


@dataclass
class ObjectiveValue:
    """The weighted total to backpropagate, and each term's value, weight and temperature."""

    total: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]
    temperatures: dict[str, float]


class Term:
    """One loss in the objective, with its weight, temperature, taps and options.

    ``rows="labelled"`` restricts a loss with a mask to the rows that carry a label (not
    -100): DistilBERT's soft-target KL counts the masked tokens only."""

    def __init__(
        self,
        loss: Callable[..., Tensor],
        weight: float | Schedule = 1.0,
        temperature: float | Schedule | None = None,
        *,
        student: str | None = None,
        teacher: str | None = None,
        projector: Literal["auto", "none"] | nn.Module = "auto",
        rows: Literal["all", "labelled"] = "all",
        **options: Any,
    ) -> None:
        self.loss = loss
        self.rows = rows
        self.weight = as_schedule(weight)
        self.temperature = None if temperature is None else as_schedule(temperature)
        self.student_tap, self.teacher_tap = student, teacher
        self.projector = projector
        self.options = options
        self.name = getattr(loss, "__name__", type(loss).__name__)
        params = loss_parameters(loss)  # of forward, for a loss with state (DINO's centre)
        self.reads = inputs_read(loss)
        self.optional = {n for n in self.reads if params[n].default is not inspect.Parameter.empty}
        self._check(params)

    def _check(self, params: Mapping[str, inspect.Parameter]) -> None:
        where = f"Term({self.name})"
        unknown = set(self.options) - set(params)
        if unknown:
            allowed = sorted(set(params) - {*INPUT_NAMES, "temperature"})
            raise TypeError(f"{where}: unknown option(s) {sorted(unknown)}; allowed: {allowed}")
        if self.rows not in ("all", "labelled"):
            raise TypeError(f"{where}: rows must be 'all' or 'labelled', got {self.rows!r}")
        if self.rows == "labelled" and "mask" not in params:
            raise TypeError(f"{where}: rows='labelled' needs a loss that takes a mask")
        if self.temperature is not None and "temperature" not in params:
            raise TypeError(f"{where}: this loss takes no temperature; drop temperature=")
        for side, tap in (("student", self.student_tap), ("teacher", self.teacher_tap)):
            reads = f"{side}_features" in params
            if reads and tap is None:
                raise TypeError(f"{where}: a feature loss needs {side}='<module path>'")
            if tap is not None and not reads:
                raise TypeError(f"{where}: this loss reads no features; drop {side}=")
        supplied = {*INPUT_NAMES, "temperature", *self.options}
        missing = [
            n
            for n, p in params.items()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in supplied
        ]
        if missing:
            raise TypeError(f"{where}: required argument(s) {missing} are not known inputs")

    @property
    def reads_teacher(self) -> bool:
        return any(n.startswith("teacher_") for n in self.reads)

    @property
    def needs_same_shape(self) -> bool:
        return getattr(self.loss, "requires_same_shape", False) and self.projector != "none"

    def __call__(
        self, inputs: LossInputs, step: int, total_steps: int, projector: nn.Module | None
    ) -> tuple[Tensor, float | None]:
        kwargs = dict(self.options)
        for name in self.reads:
            value = getattr(inputs, name)
            if name == "student_features":
                value = value[self.student_tap]
                if projector is not None:
                    value = projector(value)
            elif name == "teacher_features":
                value = value[self.teacher_tap]
            elif value is None and name not in self.optional:
                raise ValueError(f"Term({self.name}) reads {name}, but this batch has none")
            kwargs[name] = value
        if self.rows == "labelled" and inputs.labels is not None:
            labelled = inputs.labels != IGNORE_INDEX
            kwargs["mask"] = labelled if inputs.mask is None else labelled & inputs.mask.bool()
        temperature = None
        if self.temperature is not None:
            temperature = float(self.temperature(step, total_steps))
            kwargs["temperature"] = temperature
        return self.loss(**kwargs), temperature


class Objective(nn.Module):
    """Named terms summed with their weights; owns the terms' projectors."""

    def __init__(self, terms: Mapping[str, Term] | None = None, **named: Term) -> None:
        super().__init__()
        self.terms: dict[str, Term] = {**(terms or {}), **named}
        if not self.terms:
            raise ValueError("an Objective needs at least one Term")
        for name, term in self.terms.items():
            if not isinstance(term, Term):
                raise TypeError(f"objective term {name!r} is a {type(term).__name__}, not a Term")
        self.projectors = nn.ModuleDict(
            {n: t.projector for n, t in self.terms.items() if isinstance(t.projector, nn.Module)}
        )
        # losses that carry state (DINO's centre): kept in checkpoints, moved with the student
        self.loss_states = nn.ModuleDict(
            {n: t.loss for n, t in self.terms.items() if isinstance(t.loss, nn.Module)}
        )

    @property
    def student_taps(self) -> list[str]:
        return sorted({t.student_tap for t in self.terms.values() if t.student_tap})

    @property
    def teacher_taps(self) -> list[str]:
        return sorted({t.teacher_tap for t in self.terms.values() if t.teacher_tap})

    @property
    def labelled_rows(self) -> dict[str, bool]:
        """Per term, whether it averages over the labelled rows only (a loss that reads
        labels and nothing of a teacher or of features, like cross-entropy, or a term with
        ``rows="labelled"``) rather than every row under the mask. A micro-batch's part of
        a term weighs by that term's rows, so accumulated micro-batches make the update of
        one batch."""
        unlabelled = ("teacher_logits", "teacher_features", "student_features")
        return {
            name: t.rows == "labelled"
            or ("labels" in t.reads and not any(n in t.reads for n in unlabelled))
            for name, t in self.terms.items()
        }

    @property
    def labelled_rows_only(self) -> bool:
        """Whether every term averages over the labelled rows only."""
        return all(self.labelled_rows.values())

    def reads(self, name: str) -> bool:
        """Whether any term reads the input ``name`` (one of INPUT_NAMES)."""
        return any(name in t.reads for t in self.terms.values())

    @property
    def reads_teacher(self) -> bool:
        return any(t.reads_teacher for t in self.terms.values())

    def check_teacher(self, teacher: Teacher | None) -> None:
        """Refuse a teacher this objective cannot learn from: none when a term reads one,
        a model not wrapped as a ``Teacher``, or answers that hold at one temperature
        (an ensemble mixes probabilities at its temperature; a top-k cache stores them at
        one) read by a term at another fixed temperature."""
        if teacher is not None and not isinstance(teacher, Teacher):
            raise TypeError(
                f"teacher is a {type(teacher).__name__}, not a distill.teachers.Teacher; wrap "
                "a model as teachers.Module(model)"
            )
        if self.reads_teacher and teacher is None:
            raise ValueError(
                "the objective has terms that read the teacher, but teacher=None; pass a "
                "teacher (e.g. distill.teachers.Module(model)) or use labels-only terms"
            )
        if teacher is None or teacher.fixed_temperature is None:
            return
        temperature = teacher.fixed_temperature
        terms = {  # a number becomes a Constant schedule; a schedule is not fixed
            name: (term.reads, t.value if isinstance(t := term.temperature, Constant) else None)
            for name, term in self.terms.items()
        }
        clash = temperature_clash(terms, temperature)
        if clash is not None:
            raise ValueError(
                f"objective term {clash[0]!r} reads the teacher at temperature {clash[1]:g}, "
                f"but the teacher's answers hold at {temperature:g} (an ensemble's mixing "
                "temperature, a top-k cache's or a server's); use the same temperature for both"
            )

    @torch.no_grad()
    def build(self, inputs: LossInputs) -> None:
        """Create the projectors from the first batch's shapes; call before the optimizer."""
        for name, term in self.terms.items():
            if name in self.projectors or not term.needs_same_shape:
                continue
            student = inputs.student_features[term.student_tap]
            teacher = inputs.teacher_features[term.teacher_tap]
            if student.shape != teacher.shape:
                projector = build_projector(tuple(student.shape), tuple(teacher.shape))
                self.projectors[name] = projector.to(student.device)

    def forward(self, inputs: LossInputs, step: int = 0, total_steps: int = 1) -> ObjectiveValue:
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        temperatures: dict[str, float] = {}
        for name, term in self.terms.items():
            projector = self.projectors[name] if name in self.projectors else None
            value, temperature = term(inputs, step, total_steps, projector)
            weight = float(term.weight(step, total_steps))
            values[name], weights[name] = value, weight
            if temperature is not None:
                temperatures[name] = temperature
            total = weight * value if total is None else total + weight * value
        assert total is not None
        return ObjectiveValue(total, values, weights, temperatures)


ANSWERS = ("teacher_logits", "teacher_topk")  # what a teacher answers at one temperature


def temperature_clash(
    terms: Mapping[str, tuple[Sequence[str], float | None]], held_at: float
) -> tuple[str, float] | None:
    """The first term (name -> (inputs it reads, its fixed temperature or None)) that reads
    the teacher's answers at a fixed temperature other than ``held_at``, the temperature
    those answers hold at, and that temperature; None when all agree. The one check of
    temperature agreement: ``Objective.check_teacher`` at run time, the recipe schema
    before any training (an ensemble's mixing temperature, a served teacher's 1)."""
    for name, (reads, fixed) in terms.items():
        if fixed is not None and set(ANSWERS) & set(reads) and abs(fixed - held_at) > 1e-6:
            return name, fixed
    return None


def default_objective(teacher: Teacher | None) -> Objective:
    """Hinton KD (T = 4, or the teacher's own fixed temperature; kd_weight 0.9, ce_weight
    0.1) with a teacher; labels only without."""
    if teacher is None:
        return Objective(ce=Term(cross_entropy))
    temperature = getattr(teacher, "fixed_temperature", None) or 4.0  # checked after
    return Objective(
        ce=Term(cross_entropy, weight=0.1), kd=Term(kl, weight=0.9, temperature=temperature)
    )
