"""The recipe schema: a YAML file, validated field by field, that never executes code.

A recipe names the data, the teacher and the student (``zoo:``, ``torchvision:``, ``timm:``,
``hf:`` or a previous run directory), the objective's terms, the training settings and
where outputs go (its sections are in ``specs``). ``Recipe`` holds what every kind of run
reads; each kind of run's recipe (``recipes.kinds``, a union on ``task``) subclasses it in
its own folder, narrowing ``data`` and adding its own sections, and says what it lacks.
What does not combine is refused by one table (``recipes.support``).
``recipes/*.yaml`` in the repository are examples; ``distill run`` takes any of them with
``--set a.b=c`` overrides.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator

from distill.losses.registry import loss_info, loss_parameters
from distill.objective import temperature_clash
from distill.recipes.data_specs import DataSection, DataSpec
from distill.recipes.search_spec import SearchSpec, first_problem
from distill.recipes.specs import (
    CacheSpec,
    CompressStage,
    ExportSpec,
    GenerateSpec,
    ModelSpec,
    OnPolicySpec,
    OutputSpec,
    Scheduled,
    ScheduleSpec,
    Strict,
    StudentSpec,
    TeacherSpec,
    TermSpec,
    TrainSpec,
)
from distill.recipes.support import Clash, check_support, refusal
from distill.teachers.kinds import TeacherKind, copies_teacher

__all__ = [
    "CacheSpec",
    "CompressStage",
    "DataSection",
    "DataSpec",
    "ExportSpec",
    "GenerateSpec",
    "ModelSpec",
    "OnPolicySpec",
    "OutputSpec",
    "Recipe",
    "ScheduleSpec",
    "Scheduled",
    "SearchSpec",
    "Strict",
    "StudentSpec",
    "TeacherSpec",
    "TermSpec",
    "TrainSpec",
    "check_dense_cache",
    "reads_teacher",
]


class Recipe(Strict):
    """A whole recipe: the data, the teacher, the student, the objective's terms and the
    training budget, plus the optional stages (cache, compression, export, search, ...).
    Each kind of run (``task``) adds its own section to these shared ones."""

    # what a kind of run's recipe declares (``recipes.support``): the features it lacks,
    # with why and what to do; the pairs of features it cannot run together; and its
    # smallest valid recipe (the support matrix's examples and tests)
    lacks: ClassVar[dict[str, str]] = {}
    clashes: ClassVar[tuple[Clash, ...]] = ()
    example: ClassVar[dict[str, Any]] = {}
    # where switching a feature on in ``example`` takes more than the feature's own
    # overrides (``support.Feature.turn_on``): this kind's overrides instead
    turn_on: ClassVar[dict[str, dict[str, Any]]] = {}

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="the run's folder under output.dir: letters, digits, _ . -, not starting "
        "with a dot",
    )
    description: str = Field("", description="free text, kept in the report")
    seed: int = Field(0, description="the students' initial weights, data order and mixing")
    task: str = Field(
        description="the kind of run: what the models read and are measured on (each kind "
        "and its own sections: below)"
    )
    data: DataSection = Field(description="the rows: each kind of run's own data section")
    teacher: TeacherSpec | None = Field(None, description="null: no term may read a teacher")
    student: StudentSpec = Field(description="the model trained; optionally LoRA adapters")
    objective: dict[str, TermSpec] = Field(description="named terms, summed with weights")
    train: TrainSpec = Field(description="every student's budget and optimizer")
    baseline: bool = Field(True, description="also train a label-only student, same budget")
    compress: list[CompressStage] = Field(
        default_factory=list,
        description="stages run in order on the distilled student, each with distillation "
        "from the original teacher and a report row",
    )
    export: ExportSpec | None = Field(None, description="ONNX export, checked, at the end")
    cache: CacheSpec | None = Field(None, description="teacher-output cache (distill cache)")
    search: SearchSpec | None = Field(None, description="distill search: the student's space")
    output: OutputSpec = Field(default_factory=OutputSpec, description="where the run is kept")

    @model_validator(mode="after")
    def _shared_checks(self) -> Recipe:
        check_support(self, type(self).lacks, type(self).clashes)
        mutual = [n for n, t in self.objective.items() if t.loss == "mutual_learning"]
        if bool(mutual) != (getattr(self, "peers", 1) > 1):
            raise ValueError(
                "mutual learning needs peers >= 2 and an objective term "
                "{loss: mutual_learning, student: stack}; give both or neither"
            )
        self._check_domains()
        self._check_ensemble_temperature()
        self._check_compress()
        self._check_search()
        if self.cache is not None and (self.teacher is None):
            raise ValueError("cache: needs a teacher to run once")
        if self.student.copies_teacher and self.teacher is None:
            raise ValueError("student.model 'teacher' copies teacher layers, but no teacher is set")
        if not self.objective:
            raise ValueError("objective needs at least one term")
        if self.teacher is None:
            reads = [name for name, t in self.objective.items() if reads_teacher(t)]
            if reads:
                raise ValueError(f"objective terms {reads} read the teacher, but no teacher is set")
        return self

    def _check_ensemble_temperature(self) -> None:
        """An ensemble mixes its members' probabilities at ``teacher.temperature``: a term
        that reads its logits at another fixed temperature would distil a different mix."""
        teacher = self.teacher
        if (
            teacher is None
            or teacher.kind is not TeacherKind.ENSEMBLE
            or teacher.combine == "route"
        ):
            return
        clash = temperature_clash(fixed_temperatures(self.objective), teacher.temperature)
        if clash is not None:
            raise ValueError(
                f"teacher.temperature {teacher.temperature:g} (the ensemble mixes its "
                f"members' probabilities at it) differs from objective.{clash[0]}.temperature "
                f"{clash[1]:g}; set both to the same value"
            )

    def _check_search(self) -> None:
        if self.search is None:
            return
        try:
            TrainSpec.model_validate({**self.train.model_dump(), **self.search.train})
        except ValidationError as error:
            raise ValueError(f"search.train.{first_problem(error)}") from None
        teacherless = [c.model for c in self.search.candidates if copies_teacher(c.model)]
        if teacherless and self.teacher is None:
            raise ValueError(
                "search.candidates: model 'teacher' copies teacher layers; set teacher"
            )

    def _check_compress(self) -> None:
        kinds = [stage.kind for stage in self.compress]
        if not kinds:
            return
        if self.teacher is None:
            raise ValueError("compress stages distil from the recipe's teacher: set teacher")
        if "quantize" in kinds[:-1]:
            raise ValueError(f"compress: quantize must be the last stage, got {kinds}")
        if "prune" in kinds and any(k != "quantize" for k in kinds[kinds.index("prune") + 1 :]):
            raise ValueError(
                "compress: only quantize may follow prune (channels and factorize would reshape "
                f"the pruned weights); got {kinds}"
            )

    def _check_domains(self) -> None:
        domains = getattr(self.data, "domains", None) or {}
        members = self.teacher.members or [] if self.teacher else []
        if self.teacher is not None and self.teacher.combine == "route":
            missing = set(domains) - {m.domain for m in members}
            if not domains or missing:
                raise ValueError(
                    "combine: route needs data.domains and one member per domain"
                    + (f"; no member for {sorted(missing)}" if missing else "")
                )
        named = [("teacher", self.teacher)] if self.teacher else []
        named += [(f"teacher.members[{i}]", member) for i, member in enumerate(members)]
        for where, spec in named:
            if spec.domain is not None and spec.domain not in domains:
                raise ValueError(
                    f"{where}.domain {spec.domain!r} is not one of data.domains "
                    f"({', '.join(domains) or 'none set'})"
                )


def fixed_temperatures(
    terms: dict[str, TermSpec],
) -> dict[str, tuple[tuple[str, ...], float | None]]:
    """Each term's inputs (an LM-head term reads the teacher's logits through its head) and
    the one temperature it reads them at: its own number, or its loss's default; None for a
    schedule. ``objective.temperature_clash`` checks them against a teacher's."""
    found = {}
    for name, term in terms.items():
        info = loss_info(term.loss)
        temperature = term.temperature
        if temperature is None:  # the loss's own default, if it has one
            parameter = loss_parameters(info.fn).get("temperature")
            temperature = None if parameter is None else parameter.default
        fixed = float(temperature) if isinstance(temperature, (int, float)) else None
        reads = (*info.reads, *(["teacher_logits"] if info.lm_heads else []))
        found[name] = (reads, fixed)
    return found


def reads_teacher(term: TermSpec) -> bool:
    return loss_info(term.loss).reads_teacher


def check_dense_cache(recipe: Recipe, kept_tap: str | None = None) -> None:
    """A cache of dense answers (a classifier's logits for the data as split, unaugmented;
    or the ``kept_tap`` feature its logits follow from) holds no other teacher features."""
    if recipe.cache is None or not recipe.cache.use:
        return
    features = [n for n, t in recipe.objective.items() if t.teacher not in (None, kept_tap)]
    if features:
        raise refusal(
            f"objective.{features[0]}.teacher",
            "cache.use",
            "a cache keeps the teacher's answers, not its features; set cache.use: false",
        )
