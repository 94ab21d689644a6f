"""The sections of a recipe (data, models, objective terms, training, cache, compression
stages, ...), each a pydantic model validated field by field; ``schema.Recipe`` puts them
together and checks how they combine."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill import schedules
from distill.losses.registry import RECIPE_LOSSES
from distill.methods.generation import GenerationSettings
from distill.methods.verify import VerifySpec
from distill.teachers.kinds import TeacherKind, copies_teacher
from distill.training.config import TrainConfig

LossName = Literal[RECIPE_LOSSES]  # type: ignore[valid-type]


class Strict(BaseModel):
    """The base of every recipe section: an unknown field is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class ScheduleSpec(Strict):
    """A value that changes over training: ``{kind: warmup, value: 1.0, epochs: 20}``."""

    kind: Literal["constant", "linear", "cosine", "warmup"] = Field(
        description="constant: value; warmup: from 0 up to value, then value; linear, cosine: "
        "from start to end"
    )
    value: float | None = Field(None, description="constant, warmup: the value")
    start: float | None = Field(None, description="linear, cosine: the value at step 0")
    end: float | None = Field(None, description="linear, cosine: the value reached, then kept")
    steps: int | None = Field(
        None, ge=1, description="updates the change takes; None: all of training"
    )
    epochs: float | None = Field(None, gt=0, description="the same in epochs, instead of steps")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> ScheduleSpec:
        need = {
            "constant": ("value",),
            "warmup": ("value",),
            "linear": ("start", "end"),
            "cosine": ("start", "end"),
        }[self.kind]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} schedule needs {', '.join(missing)}")
        if self.kind == "warmup" and self.steps is None and self.epochs is None:
            raise ValueError("a warmup schedule needs steps or epochs")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self

    def build(self, steps_per_epoch: int) -> schedules.Schedule:
        steps = self.steps
        if self.epochs is not None:
            steps = max(1, round(self.epochs * steps_per_epoch))
        if self.kind == "constant":
            return schedules.Constant(self.value)  # type: ignore[arg-type]
        if self.kind == "warmup":
            return schedules.Warmup(self.value, steps)  # type: ignore[arg-type]
        kind = schedules.Linear if self.kind == "linear" else schedules.Cosine
        return kind(self.start, self.end, steps)  # type: ignore[arg-type]


Scheduled = float | ScheduleSpec


class TermSpec(Strict):
    """One objective term: a built-in loss, its weight, temperature, taps and options.

    ``loss: lm_head_kd`` is token-level KD through the two models' LM heads without full
    logits (language-model recipes; ``options`` go to ``lm_head_kd``)."""

    loss: LossName = Field(description="a built-in loss (its parameters: `distill losses`)")
    weight: Scheduled = Field(1.0, description="the term's weight in the sum, or a schedule")
    temperature: Scheduled | None = Field(
        None,
        description="softens both models' logits (the loss scales by T²), or a schedule; "
        "None: the loss's default",
    )
    student: str | None = Field(None, description="student tap path, for feature losses")
    teacher: str | None = Field(None, description="teacher tap path, for feature losses")
    rows: Literal["all", "labelled"] = Field(
        "all",
        description="labelled: only rows with a label count (DistilBERT's KL on masked tokens)",
    )
    options: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="the loss's other parameters, by name"
    )

    @model_validator(mode="after")
    def _positive_temperature(self) -> TermSpec:
        t = self.temperature
        values = [t] if isinstance(t, (int, float)) else []
        if isinstance(t, ScheduleSpec):
            if t.kind == "warmup":
                raise ValueError("temperature: a warmup schedule starts at 0; use linear or cosine")
            values = [v for v in (t.value, t.start, t.end) if v is not None]
        if any(v <= 0 for v in values):
            raise ValueError(f"temperature must be > 0 (it divides the logits), got {values}")
        return self


class ModelSpec(Strict):
    """``model`` is ``zoo:<name>``, ``torchvision:<name>``, ``timm:<name>``, ``hf:<id|dir>``
    or the directory of an earlier distill run (its student, with its weights). Language-model
    recipes also take ``hf-config:<model_type>`` (random weights; ``args`` are config fields)
    and, for the student, ``teacher``: a copy of the teacher with fewer layers
    (``args: {keep: 6 | [0, 2, 4] | every_other, select: similarity | uniform}``)."""

    model: str = Field(description="where the model comes from (above)")
    args: dict[str, Any] = Field(
        default_factory=dict, description="the builder's or config's arguments"
    )
    checkpoint: Path | None = Field(None, description="safetensors weights to load")
    pretrained: bool = Field(
        False, description="image classifiers (torchvision:, timm:, hf:): pretrained weights"
    )

    @property
    def copies_teacher(self) -> bool:
        """``model: teacher``: a copy of the teacher's layers."""
        return copies_teacher(self.model)


class LoraSpec(Strict):
    """LoRA adapters on the student (``peft``): its weights stay frozen and only the
    adapters train, are checkpointed and saved; the saved student is merged."""

    r: int = Field(8, ge=1, description="the adapters' rank")
    alpha: float = Field(16.0, gt=0, description="scale: the update is (alpha / r) · B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] = Field(
        min_length=1,
        description="module names (or the ends of their paths) that get adapters, e.g. "
        "[q_proj, v_proj]",
    )

    @model_validator(mode="after")
    def _peft_installed(self) -> LoraSpec:
        if importlib.util.find_spec("peft") is None:
            raise ValueError("LoRA students need the peft package: pip install peft")
        return self


class StudentSpec(ModelSpec):
    """The student: a model spec, optionally with LoRA adapters (``peft``)."""

    peft: LoraSpec | None = Field(None, description="LoRA adapters (the peft package)")


class TrainSpec(TrainConfig):
    """TrainConfig's settings plus the budget. ``run_dir`` comes from ``output.dir``."""

    epochs: int | None = Field(None, ge=1, description="passes over the training data")
    max_steps: int | None = Field(
        None, ge=1, description="updates; with epochs, whichever ends first"
    )

    @model_validator(mode="after")
    def _budget(self) -> TrainSpec:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps")
        if self.run_dir is not None:
            raise ValueError("run_dir is set by output.dir and the run name, not in train")
        return self


class TeacherSpec(ModelSpec):
    """The teacher: weights from ``checkpoint`` or a run directory, else trained with
    ``train`` once and cached (``distill teacher`` does it explicitly).

    ``model: ensemble`` combines ``members`` (each a teacher spec, trained and cached on its
    own) by ``combine`` at ``temperature`` (use the KD term's); ``combine: route`` sends each
    example to the member whose ``domain`` (one of ``data.domains``, the only data that
    member is trained on) is the example's. ``model: ema`` is
    self-distillation: the teacher is the moving average of the student during training,
    with momentum ``ema_momentum`` rising to 1 along a cosine."""

    train: TrainSpec | None = Field(
        None, description="train the teacher first, with this budget; None: load it as it is"
    )
    autocast: Literal["no", "bf16", "fp16"] = Field(
        "no", description="the teacher's forward under autocast in this type"
    )
    cache: bool = Field(True, description="reuse a teacher trained earlier with the same spec")
    members: list[TeacherSpec] | None = Field(None, description="model: ensemble: its teachers")
    combine: Literal["mean", "weighted", "confidence", "route"] = Field(
        "mean",
        description="ensemble: the members' probabilities averaged, weighted by weights, "
        "weighted per example by confidence, or routed by domain",
    )
    domain: str | None = Field(
        None, description="ensemble member: train on this one of data.domains only"
    )
    weights: list[float] | None = Field(None, description="combine: weighted: one per member")
    temperature: float = Field(1.0, gt=0, description="ensemble: the temperature of the mix")
    ema_momentum: float = Field(0.99, ge=0, le=1, description="model: ema: the starting momentum")
    tokenizer: str | None = Field(
        None,
        description="causal_lm: hf:<id or dir>, the teacher's own tokenizer when it is not "
        "the student's (data.tokenizer): cross-tokenizer KD (objective cross_tokenizer_kd)",
    )

    @property
    def kind(self) -> TeacherKind:
        """What ``model`` names: one network, ``ema``, ``ensemble`` or ``served:<url>``."""
        return TeacherKind.of(self.model)

    @model_validator(mode="after")
    def _kind(self) -> TeacherSpec:
        if (self.kind is TeacherKind.ENSEMBLE) != bool(self.members):
            raise ValueError("give members exactly when model is ensemble (two or more teachers)")
        if self.members is not None and len(self.members) < 2:
            raise ValueError("an ensemble needs at least two members")
        if (self.weights is not None) != (self.combine == "weighted"):
            raise ValueError("give weights exactly when combine is weighted")
        if self.weights is not None and len(self.weights) != len(self.members or []):
            raise ValueError(f"weights needs one number per member ({len(self.members or [])})")
        if self.kind is TeacherKind.EMA and (self.train or self.checkpoint):
            raise ValueError("an ema teacher is the student's moving average: no train/checkpoint")
        if self.combine == "route":
            named = [m.domain for m in self.members or []]
            if None in named or len(set(named)) != len(named):
                raise ValueError(
                    "combine: route needs a different domain on every member (members[*].domain, "
                    f"one of data.domains); got {named}"
                )
        return self


class CompressStage(Strict):
    """One compression stage, run on the distilled student and followed (or, for gradual
    pruning and QAT, accompanied) by distillation from the original teacher with the
    recipe's objective, for ``epochs`` of the student's data (or ``max_steps``).

    - ``prune``: global magnitude pruning to ``sparsity``, gradually (cubic schedule,
      reached at ``end`` of the stage), zeros kept by later stages;
    - ``channels``: remove ``ratio`` of every layer's channels (Torch-Pruning);
    - ``factorize``: truncated SVD of Linear/conv layers at ``rank`` or ``energy``;
    - ``quantize``: quantization-aware training with torchao's ``scheme``, then converted
      (the last stage); with ``epochs: 0``, post-training quantization, no training."""

    kind: Literal["prune", "channels", "factorize", "quantize"] = Field(
        description="the stage's kind (each one described above)"
    )
    sparsity: float | None = Field(
        None, gt=0, lt=1, description="prune: the share of weights zeroed"
    )
    end: float = Field(0.75, gt=0, le=1, description="prune: share of the stage to reach it")
    ratio: float | None = Field(None, gt=0, lt=1, description="channels: the share removed")
    rank: int | None = Field(None, ge=1, description="factorize: the rank kept in every layer")
    energy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="factorize: each layer's smallest rank keeping this share of Σ σ²",
    )
    scheme: Literal["int8", "int8_weight_only", "int4_weight_only"] = Field(
        "int8", description="quantize: int8 weights and activations, or weights only"
    )
    skip: list[str] = Field(default_factory=list, description="module paths left as they are")
    epochs: int | None = Field(1, ge=0, description="0: no recovery training")
    max_steps: int | None = Field(None, ge=1, description="recovery updates, instead of epochs")
    lr: float | None = Field(None, gt=0, description="None: train.lr")
    recover: Literal["teacher", "student", "labels"] = Field(
        "teacher",
        description="teacher: the recipe's objective with the original teacher; student: "
        "the same objective with the distilled student before compression (the uncompressed "
        "model) as the teacher; labels: cross-entropy on the labelled examples alone",
    )

    @model_validator(mode="after")
    def _fields(self) -> CompressStage:
        needs = {"prune": ["sparsity"], "channels": ["ratio"], "factorize": [], "quantize": []}
        for name in needs[self.kind]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.kind} stage needs {name}")
        if self.kind == "factorize" and (self.rank is None) == (self.energy is None):
            raise ValueError("a factorize stage needs exactly one of rank or energy")
        if self.kind == "prune" and self.epochs == 0 and self.max_steps is None:
            raise ValueError("a prune stage prunes while training: give it epochs or max_steps")
        return self


class ExportSpec(Strict):
    """Export at the end of ``distill run`` (as ``distill export`` does): the last float
    stage as ONNX, and an int8 QAT stage as static int8 QDQ ONNX, each checked in ONNX
    Runtime against PyTorch on the test split."""

    int8: bool = Field(False, description="also ONNX Runtime's dynamic int8 version")
    qdq: bool = Field(
        False,
        description="when the last stage is int8 QAT, also that student as a static int8 QDQ "
        "ONNX graph, checked against it",
    )
    calibration_examples: int = Field(
        512, ge=1, description="training inputs that set the QDQ graph's activation ranges"
    )
    min_agreement: float = Field(0.999, gt=0, le=1, description="top-1 agreement asked")
    atol: float = Field(1e-3, gt=0, description="largest logit difference allowed")
    int8_min_agreement: float = Field(
        0.97, gt=0, le=1, description="top-1 agreement asked of the int8 versions"
    )


class CacheSpec(Strict):
    """The teacher-output cache: ``distill cache RECIPE`` runs the teacher once over the
    training and validation rows and stores its answers; with ``use`` the distilled
    student trains against them (``teachers.Cached``) instead of running the teacher."""

    dir: Path | None = Field(None, description="None: <output.dir>/<name>/teacher_outputs")
    top_k: int | None = Field(
        64,
        ge=1,
        description="language models: tokens kept per position; None: dense logits (what a "
        "classifier's cache always holds)",
    )
    logprob_dtype: Literal["float16", "float32"] = Field(
        "float16", description="plain top-k: the stored log-probabilities' type"
    )
    encoding: Literal["plain", "compact"] = Field(
        "plain",
        description="top-k: plain (ids and logprob_dtype log-probs) or compact (ids "
        "bit-packed, log-probs as a curve over the rank plus residual_bits per entry)",
    )
    curve_degree: int = Field(2, ge=1, le=6, description="compact: the curve's degree")
    residual_bits: Literal[0, 2, 3, 4, 5, 6, 7, 8] = Field(
        3, description="compact: bits per entry for what the curve misses"
    )
    hidden_states: bool = Field(
        False,
        description="causal_lm: keep the teacher's final hidden states (hidden size x 2 bytes "
        "per token) and its LM head once, for exact full-vocabulary KD; top_k unused",
    )
    shard_size: int = Field(256, ge=1, description="examples per shard file")
    batch_size: int = Field(8, ge=1, description="teacher batch size while caching")
    use: bool = Field(True, description="train the distilled student against the cache")


class GenerateSpec(GenerationSettings):
    """Sequence-level KD: ``distill generate RECIPE`` (or ``distill run``, when the file is
    missing) makes the teacher answer ``prompts`` and writes a chat dataset with a
    provenance file; point ``data.source`` at ``out`` with ``data.format: chat``."""

    prompts: str = Field(
        description="a .jsonl (prompt or messages per row) or .txt (a prompt per line) file, "
        "or 'pydoc': questions about CPython's help topics"
    )
    out: Path | None = Field(None, description="None: <output.dir>/<name>/generated.jsonl")
    max_prompts: int | None = Field(None, ge=1, description="the first this many; None: all")
    verify: VerifySpec | None = Field(
        None,
        description="keep only answers whose final result matches each prompt's 'answer' "
        "(rejection sampling; with samples > 1, keep chooses among the correct ones)",
    )


class OnPolicySpec(Strict):
    """On-policy distillation (GKD, Agarwal et al. 2024): with probability ``lam`` per
    batch the student writes the answers, which the teacher then scores token by token."""

    lam: float = Field(0.5, ge=0, le=1, description="share of batches answered by the student")
    max_new_tokens: int = Field(64, ge=1, description="the longest student answer, in tokens")
    temperature: float = Field(1.0, ge=0, description="the student's sampling; 0: greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="the student's nucleus sampling")


class OutputSpec(Strict):
    """Where a run is kept (``<dir>/<name>``) and what its report and model card say."""

    dir: Path = Field(Path("runs"), description="runs are folders <dir>/<name>")
    license: str | None = Field(
        None, description="the model card's license (distill push), e.g. apache-2.0; None: other"
    )
    latency_repeats: int = Field(50, ge=1, description="timed batch-1 forwards per model")
