"""The recipe of ``task: self_supervised``: unlabelled images seen as multi-crop views
(``data.views``), the labels the features are judged with afterwards (``data.probe``), and
the method's settings (``selfsup``). The teacher is the student's moving average
(``teacher.model: ema``, learning from scratch) or a frozen encoder from an earlier run of
this kind (a smaller student distilled without labels)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from distill.recipes.schema import DataSpec, Recipe, Strict
from distill.teachers.kinds import TeacherKind

NOT_BUILT = "not built for self-supervised encoders yet"
FEATURE_LOSSES = {"cosine_embedding", "hint"}  # the encoders' features, frozen teacher only
METHOD_LOSS = {"dino": "dino", "byol": "byol"}


class ViewsSpec(Strict):
    """Multi-crop (Caron et al. 2021): ``global_views`` large crops, which the teacher
    sees, and ``local_views`` small ones, which only the student sees; each crop is
    resampled to the image's size."""

    global_views: int = Field(2, ge=1, description="large crops; the teacher reads these")
    local_views: int = Field(4, ge=0, description="small crops; only the student reads them")
    global_scale: tuple[float, float] = Field(
        (0.4, 1.0), description="share of the image's area a global crop covers: low, high"
    )
    local_scale: tuple[float, float] = Field(
        (0.05, 0.4), description="share of the image's area a local crop covers: low, high"
    )
    flip: bool = Field(False, description="random horizontal flips of every view")

    @model_validator(mode="after")
    def _scales(self) -> ViewsSpec:
        for field in ("global_scale", "local_scale"):
            low, high = getattr(self, field)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{field}: give [low, high] with 0 < low <= high <= 1")
        return self


class ProbeSpec(Strict):
    """How the frozen features are judged on the test split, with labels the feature
    learning never read: k-NN (cosine, temperature-weighted votes as in DINO) over every
    training example, and linear probes fitted on the first ``labels`` training examples."""

    labels: list[int] = Field(
        default_factory=lambda: [2000],
        min_length=1,
        description="labelled training examples per linear probe; the first also trains "
        "the label-only baseline (0: every training example)",
    )
    knn_k: int = Field(20, ge=1, description="neighbours that vote")
    knn_temperature: float = Field(0.07, gt=0, description="votes weighted by exp(cos / T)")
    steps: int = Field(300, ge=1, description="L-BFGS steps of each linear probe")
    weight_decay: float = Field(1e-4, ge=0, description="the probe's L2 penalty")


class SelfSupData(DataSpec):
    """Images whose labels the feature learning never reads: its views, and its probe."""

    views: ViewsSpec = Field(default_factory=ViewsSpec, description="the multi-crop views")
    probe: ProbeSpec = Field(default_factory=ProbeSpec, description="how the features are judged")


class SelfSupSpec(Strict):
    """The encoder's heads: ``embed_dim`` features (what the probes read), a projection
    head to ``out_dim`` (DINO: MLP, L2-normalised bottleneck, linear layer; BYOL: MLP), and
    for BYOL a predictor on the student only."""

    method: Literal["dino", "byol"] = Field(
        "dino", description="dino: centred, sharpened targets; byol: cosine regression"
    )
    embed_dim: int = Field(128, ge=2, description="the encoder's output: the features probed")
    hidden: int = Field(256, ge=2, description="the heads' hidden width")
    bottleneck: int = Field(64, ge=2, description="dino: the normalised bottleneck")
    out_dim: int = Field(256, ge=2, description="the projection's output (dino: prototypes)")
    predictor: bool = Field(True, description="byol: the student's predictor head")
    student_temperature: float = Field(0.1, gt=0, description="dino: τ_s")
    teacher_temperature: float = Field(
        0.01,
        gt=0,
        description="dino: τ_t (sharpening); the paper's 0.04 let a small CNN's targets turn "
        "uniform on Fashion-MNIST, 0.01 learnt (docs: Features without labels)",
    )
    center_momentum: float = Field(0.9, ge=0, lt=1, description="dino: the centre's average")
    teacher_temperature_start: float | None = Field(
        None,
        gt=0,
        description="dino: τ_t's warm-up (the paper: 0.04 rising to 0.07) starts here and "
        "rises linearly to teacher_temperature over warmup_epochs; None: no warm-up",
    )
    warmup_epochs: float = Field(0, ge=0, description="dino: epochs of τ_t's warm-up")


class SelfSupervisedRecipe(Recipe):
    """``task: self_supervised``: an encoder learns features from unlabelled images,
    measured by k-NN and linear-probe accuracy on the test split."""

    lacks: ClassVar[dict[str, str]] = {
        "cache": "the teacher's answers to random views differ every epoch, so they are "
        "not cacheable; drop cache",
        "compress": f"compress stages are {NOT_BUILT}; drop compress",
        "search": f"student search is {NOT_BUILT}; drop search",
        "student.peft": f"LoRA students are {NOT_BUILT}; drop student.peft",
        "teacher.model: ensemble": "one teacher encoder; set teacher.model: ema or a run",
        "teacher.model: served": "a served teacher is for language models; drop it",
        "teacher.tokenizer": "a teacher's own tokenizer is for language models; drop it",
        "student.model: teacher": f"a student cut from the teacher is {NOT_BUILT}; name a model",
        "data.augment": "the views are the augmentation; set data.views instead",
        "data.labeled": "the probe's labels are data.probe.labels; drop data.labeled",
        "teacher.train": "a frozen teacher encoder comes from an earlier run of this kind "
        "(teacher.model: <its run directory>); drop teacher.train",
        "teacher.checkpoint": "a frozen teacher encoder comes from an earlier run of this "
        "kind (teacher.model: <its run directory>); drop teacher.checkpoint",
    }
    example: ClassVar[dict[str, Any]] = {
        "name": "tiny",
        "task": "self_supervised",
        "data": {"dataset": "fashion_mnist"},
        "teacher": {"model": "ema"},
        "student": {"model": "zoo:cnn", "args": {"channels": [8, 16], "hidden": 32}},
        "objective": {"dino": {"loss": "dino"}},
        "train": {"epochs": 1, "select_metric": None},
        "baseline": False,
    }

    turn_on: ClassVar[dict[str, dict[str, Any]]] = {  # on a frozen teacher, not an ema
        "teacher.train": {"teacher": {"model": "runs/earlier", "train": {"epochs": 1}}},
        "teacher.checkpoint": {"teacher": {"model": "runs/earlier", "checkpoint": "t.safetensors"}},
    }

    task: Literal["self_supervised"] = Field(
        description="the kind of run: features learned without labels"
    )
    data: SelfSupData = Field(description="images, their views, and the probe")
    selfsup: SelfSupSpec = Field(default_factory=SelfSupSpec, description="the method")

    @model_validator(mode="after")
    def _selfsup_checks(self) -> SelfSupervisedRecipe:
        self._objective_checks()
        if self.train.select_metric is not None:
            raise ValueError(
                "train.select_metric: the features are judged after training, by the probe; "
                "set train.select_metric: null (the last step)"
            )
        method = self.selfsup
        if (method.teacher_temperature_start is None) != (method.warmup_epochs == 0):
            raise ValueError(
                "selfsup.warmup_epochs: the teacher temperature's warm-up needs both "
                "selfsup.teacher_temperature_start and selfsup.warmup_epochs > 0 (or neither)"
            )
        if self.selfsup.method == "byol" and not self.selfsup.predictor:
            raise ValueError(
                "selfsup.predictor: BYOL needs the student's predictor (without it the two "
                "networks collapse to a constant); set selfsup.predictor: true"
            )
        return self

    def _objective_checks(self) -> None:
        """The method's term; with a frozen teacher, also (or instead) terms matching the
        two encoders' features on the views both read."""
        wanted = METHOD_LOSS[self.selfsup.method]
        frozen = self.teacher is not None and self.teacher.kind is TeacherKind.MODEL
        losses = {term.loss for term in self.objective.values()}
        allowed = {wanted, *FEATURE_LOSSES} if frozen else {wanted}
        if not losses <= allowed or (not frozen and wanted not in losses):
            also = f", and with a frozen teacher {sorted(FEATURE_LOSSES)}" if frozen else ""
            raise ValueError(
                f"objective: selfsup.method {self.selfsup.method} trains with a term "
                f"{{loss: {wanted}}}{also}; got {sorted(losses)}"
                + ("" if frozen else " (feature terms need a frozen teacher: a run directory)")
            )
        for name, term in self.objective.items():
            if term.loss in FEATURE_LOSSES and (term.student, term.teacher) != ("encoder",) * 2:
                raise ValueError(
                    f"objective.{name}: {term.loss} matches the two encoders' features; set "
                    "student: encoder and teacher: encoder"
                )
