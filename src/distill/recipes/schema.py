"""The recipe schema: a YAML file, validated field by field, that never executes code.

A recipe names the data, the teacher and the student (``zoo:``, ``torchvision:``, ``timm:``,
``hf:`` or a previous run directory), the objective's terms, the training settings and
where outputs go (its sections are in ``specs``). ``recipes/*.yaml`` in the repository are
examples; ``distill run`` takes any of them with ``--set a.b=c`` overrides.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from distill.data import DATASETS
from distill.losses.registry import loss_info, loss_parameters
from distill.recipes.data_specs import DataSpec, TextDataSpec
from distill.recipes.pairings import (
    check_cross_tokenizer,
    check_pate,
    check_served,
    check_synthetic,
)
from distill.recipes.private_spec import PateSpec, SyntheticSpec
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
from distill.recipes.task_specs import DiffusionSpec

__all__ = [
    "CacheSpec",
    "CompressStage",
    "DataSpec",
    "DiffusionSpec",
    "ExportSpec",
    "GenerateSpec",
    "ModelSpec",
    "OnPolicySpec",
    "OutputSpec",
    "PateSpec",
    "Recipe",
    "ScheduleSpec",
    "Scheduled",
    "SearchSpec",
    "Strict",
    "StudentSpec",
    "SyntheticSpec",
    "TeacherSpec",
    "TermSpec",
    "TextDataSpec",
    "TrainSpec",
]


class Recipe(Strict):
    """A whole recipe: the data, the teacher, the student, the objective's terms and the
    training budget, plus the optional stages (cache, compression, export, search, ...)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="the run's folder under output.dir: letters, digits, _ . -, not starting "
        "with a dot",
    )
    description: str = Field("", description="free text, kept in the report")
    seed: int = Field(0, description="the students' initial weights, data order and mixing")
    task: Literal["classification", "causal_lm", "masked_lm", "clip", "diffusion"] = Field(
        "classification", description="the kind of run: what the models read and are measured on"
    )
    data: DataSpec | TextDataSpec = Field(discriminator="dataset", description="by dataset")
    teacher: TeacherSpec | None = Field(None, description="null: no term may read a teacher")
    student: StudentSpec = Field(description="the model trained; optionally LoRA adapters")
    objective: dict[str, TermSpec] = Field(description="named terms, summed with weights")
    train: TrainSpec = Field(description="every student's budget and optimizer")
    assistant: ModelSpec | None = Field(
        None,
        description="teacher assistant (TAKD): distilled from the teacher first, then it "
        "teaches the student, with the same objective and budget",
    )
    generations: int = Field(
        1, ge=1, description="born-again networks: generation k+1 distils from generation k"
    )
    peers: int = Field(
        1,
        ge=1,
        description="online mutual learning: this many students trained together (objective "
        "term loss: mutual_learning, student: stack); no teacher needed",
    )
    baseline: bool = Field(True, description="also train a label-only student, same budget")
    compress: list[CompressStage] = Field(
        default_factory=list,
        description="stages run in order on the distilled student, each with distillation "
        "from the original teacher and a report row",
    )
    export: ExportSpec | None = Field(None, description="ONNX export, checked, at the end")
    cache: CacheSpec | None = Field(None, description="teacher-output cache (distill cache)")
    generate: GenerateSpec | None = Field(None, description="teacher answers (distill generate)")
    on_policy: OnPolicySpec | None = Field(None, description="the student writes the answers")
    diffusion: DiffusionSpec | None = Field(None, description="task: diffusion: the rounds")
    search: SearchSpec | None = Field(None, description="distill search: the student's space")
    pate: PateSpec | None = Field(None, description="PATE: noisy votes of partition teachers")
    output: OutputSpec = Field(default_factory=OutputSpec, description="where the run is kept")

    @model_validator(mode="after")
    def _teacher_if_needed(self) -> Recipe:
        text = isinstance(self.data, TextDataSpec)
        if text != (self.task in ("causal_lm", "masked_lm")):
            raise ValueError(
                f"task {self.task} needs data.dataset "
                + ("text" if not text else f"one of {', '.join(DATASETS)}")
                + ("; set task: causal_lm or masked_lm for text" if text else "")
            )
        extras = self.assistant is not None or self.generations > 1 or self.peers > 1
        if extras and self.task != "classification":
            raise ValueError("assistant, generations and peers are for classification recipes")
        self._check_clip()
        self._check_diffusion()
        if self.peers > 1 and (self.assistant is not None or self.generations > 1):
            raise ValueError("peers (mutual learning) does not combine with assistant/generations")
        mutual = [n for n, t in self.objective.items() if t.loss == "mutual_learning"]
        if bool(mutual) != (self.peers > 1):
            raise ValueError(
                "mutual learning needs peers >= 2 and an objective term "
                "{loss: mutual_learning, student: stack}; give both or neither"
            )
        self._check_domains()
        self._check_mix()
        self._check_peft()
        self._check_ensemble_temperature()
        self._check_compress()
        self._check_cache()
        self._check_generation()
        self._check_search()
        check_synthetic(self)
        check_pate(self)
        check_cross_tokenizer(self)
        check_served(self)
        if self.student.model == "teacher" and self.teacher is None:
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
        if teacher is None or teacher.model != "ensemble" or teacher.combine == "route":
            return
        for name, term in self.objective.items():
            info = loss_info(term.loss)
            if not {"teacher_logits", "teacher_topk"} & set(info.reads):
                continue
            temperature = term.temperature
            if temperature is None:  # the loss's own default, if it has one
                parameter = loss_parameters(info.fn).get("temperature")
                temperature = None if parameter is None else parameter.default
            if isinstance(temperature, (int, float)) and temperature != teacher.temperature:
                raise ValueError(
                    f"teacher.temperature {teacher.temperature:g} (the ensemble mixes its "
                    f"members' probabilities at it) differs from objective.{name}.temperature "
                    f"{temperature:g}; set both to the same value"
                )

    def _check_diffusion(self) -> None:
        if (self.diffusion is not None) != (self.task == "diffusion"):
            raise ValueError(
                "task diffusion needs a diffusion section (steps, to_steps, ...)"
                if self.task == "diffusion"
                else "the diffusion section is for task: diffusion"
            )
        if self.task != "diffusion":
            return
        if self.teacher is None or self.teacher.model in ("ensemble", "ema"):
            raise ValueError(
                "task diffusion distils a teacher sampler: set teacher.model to hf-diffusers:"
                "<id or folder>, or to diffusers:unet2d with args and train"
            )
        if self.student.model != "teacher":
            raise ValueError(
                "student.model: progressive distillation starts each student as a copy of its "
                "teacher; set student.model: teacher"
            )
        if self.teacher.model == "diffusers:unet2d" and not (
            self.teacher.train or self.teacher.checkpoint
        ):
            raise ValueError(
                "teacher: a diffusers:unet2d teacher starts with random weights; give train "
                "(settings to train it) or checkpoint"
            )
        losses = {term.loss for term in self.objective.values()}
        method = self.diffusion.method  # type: ignore[union-attr]
        wanted = (
            "progressive_distillation" if method == "progressive" else "consistency_distillation"
        )
        if losses != {wanted}:
            raise ValueError(
                f"objective: diffusion.method {method} trains with one term {{loss: {wanted}}}, "
                f"got {sorted(losses)}"
            )
        if self.baseline or self.compress or self.export or self.cache:
            raise ValueError(
                "task diffusion: set baseline: false (the teacher's own DDIM at fewer steps "
                "is measured instead); compress, export and cache are not built for it yet"
            )

    def _check_clip(self) -> None:
        captions = getattr(self.data, "captions", None)
        if (captions is not None) != (self.task == "clip"):
            raise ValueError(
                "task clip needs data.captions (the text side: text_tower, templates, prompts)"
                if self.task == "clip"
                else "data.captions is for task: clip"
            )
        if self.task != "clip":
            return
        own = captions.files or captions.jsonl is not None
        dataset = getattr(self.data, "dataset", None)
        if own and dataset != "image_folder":
            raise ValueError(
                "data.captions.files and data.captions.jsonl give images their own captions: "
                "set data.dataset: image_folder (data.path with train/<class>/ and test/<class>/)"
            )
        if captions.column is not None and dataset != "hf_images":
            raise ValueError("data.captions.column reads a dataset column: data.dataset: hf_images")
        if self.teacher is None or self.teacher.model in ("ensemble", "ema"):
            raise ValueError(
                "task clip distils an image-text teacher: set teacher.model to an image model "
                "to train contrastively (with teacher.train) or an hf-clip: model"
            )
        if self.student.model == "teacher" and not self.teacher.model.startswith("hf-clip:"):
            raise ValueError(
                "student.model 'teacher' keeps layers of an hf-clip: teacher's image tower; "
                f"the teacher {self.teacher.model} has none to keep"
            )

    def _check_search(self) -> None:
        if self.search is None:
            return
        if self.task in ("clip", "diffusion") or self.peers > 1 or self.assistant:
            raise ValueError(
                "search: student search is built for one student of a classification or "
                "language-model recipe (not clip, diffusion, peers or an assistant)"
            )
        if self.generations > 1:
            raise ValueError("search: student search trains one student; drop generations")
        try:
            TrainSpec.model_validate({**self.train.model_dump(), **self.search.train})
        except ValidationError as error:
            raise ValueError(f"search.train.{first_problem(error)}") from None
        teacherless = [c.model for c in self.search.candidates if c.model == "teacher"]
        if teacherless and self.teacher is None:
            raise ValueError(
                "search.candidates: model 'teacher' copies teacher layers; set teacher"
            )

    def _check_compress(self) -> None:
        exports = self.task in ("classification", "clip")
        if self.export is not None and (not exports or self.peers > 1):
            raise ValueError("export is for classification and clip recipes with one student")
        kinds = [stage.kind for stage in self.compress]
        if not kinds:
            return
        if not exports or self.peers > 1:
            raise ValueError(
                "compress stages are for classification and clip recipes with one student"
            )
        if self.teacher is None or self.teacher.model == "ema":
            raise ValueError("compress stages distil from the recipe's teacher: set teacher")
        if "quantize" in kinds[:-1]:
            raise ValueError(f"compress: quantize must be the last stage, got {kinds}")
        if "prune" in kinds and any(k != "quantize" for k in kinds[kinds.index("prune") + 1 :]):
            raise ValueError(
                "compress: only quantize may follow prune (channels and factorize would reshape "
                f"the pruned weights); got {kinds}"
            )

    def _check_generation(self) -> None:
        if (self.generate or self.on_policy) and self.task != "causal_lm":
            raise ValueError("generate and on_policy are for causal_lm recipes")
        if getattr(self.data, "source", None) == "generated":
            if self.generate is None:
                raise ValueError(
                    "data.source 'generated' reads the teacher's answers: set generate"
                )
            if getattr(self.data, "format", None) != "chat":
                raise ValueError("data.source 'generated' is a chat dataset: set data.format: chat")
        if self.generate is not None and self.teacher is None:
            raise ValueError("generate: the teacher writes the answers; set teacher")
        if self.on_policy is not None:
            if getattr(self.data, "format", None) != "chat":
                raise ValueError(
                    "on_policy: the student answers the prompts of chat rows; set data.format: chat"
                )
            if self.cache is not None and self.cache.use:
                raise ValueError(
                    "on_policy: a teacher cache holds no answers to the student's own samples; "
                    "set cache.use: false"
                )

    def _check_cache(self) -> None:
        if self.cache is None:
            return
        if self.task == "masked_lm":
            raise ValueError("cache: masked-LM recipes are not cached; use a causal_lm recipe")
        if self.cache.encoding == "compact" and (self.task != "causal_lm" or not self.cache.top_k):
            raise ValueError("cache.encoding: compact is for a causal_lm top-k cache (top_k set)")
        if self.cache.hidden_states:
            if self.task != "causal_lm" or self.cache.encoding != "plain":
                raise ValueError("cache.hidden_states: for causal_lm recipes, without encoding")
            if "top_k" in self.cache.model_fields_set and self.cache.top_k is not None:
                raise ValueError("cache.top_k: a hidden-state cache keeps every logit; drop top_k")
            if self.teacher is not None and self.teacher.model.startswith("served:"):
                raise ValueError(
                    "cache.hidden_states: a served teacher gives log-probs, not states"
                )
        if self.teacher is None or self.teacher.model == "ema":
            raise ValueError("cache: needs a teacher to run once")
        if self.task in ("classification", "clip"):
            self._check_classifier_cache()
        elif self.teacher.members:
            raise ValueError("cache: a language-model cache needs one teacher model")
        elif self.cache.use:
            kd = [n for n, t in self.objective.items() if loss_info(t.loss).lm_heads]
            other = [n for n, t in self.objective.items() if reads_teacher(t) and n not in kd]
            if len(kd) != 1 or other:
                raise ValueError(
                    "cache.use: the objective must have one lm_head_kd term and no other term "
                    f"that reads the teacher (got {sorted(kd + other) or 'none'})"
                )
            if not isinstance(self.objective[kd[0]].temperature, (int, float, type(None))):
                raise ValueError(
                    f"cache.use: objective.{kd[0]}.temperature must be a number: the cache "
                    "stores the teacher at one temperature"
                )

    def _check_classifier_cache(self) -> None:
        """A classifier's cache holds its dense logits for the data as split, unaugmented; a
        CLIP teacher's, its image embeddings (the ``encoder`` tap, its logits follow)."""
        assert self.cache is not None
        if "top_k" in self.cache.model_fields_set and self.cache.top_k is not None:
            raise ValueError("cache.top_k: a classifier's cache holds dense logits; drop top_k")
        if getattr(self.data, "augment", False):
            raise ValueError(
                "cache: augmented inputs differ every epoch, so the teacher's cached answers "
                "would not match them; set data.augment: false or drop cache"
            )
        if self.assistant is not None or self.generations > 1 or self.peers > 1:
            raise ValueError(
                "cache: caches the recipe's teacher for one distilled student; drop assistant, "
                "generations and peers"
            )
        kept = "encoder" if self.task == "clip" else None
        features = [n for n, t in self.objective.items() if t.teacher not in (None, kept)]
        if self.cache.use and features:
            raise ValueError(
                f"cache.use: objective terms {features} read teacher features, which a cache "
                "does not keep; set cache.use: false"
            )

    def _check_mix(self) -> None:
        """``data.mix`` mixes a classifier's inputs and turns its labels into mixed class
        probabilities at every step."""
        if getattr(self.data, "mix", None) is None:
            return
        if self.task != "classification":
            raise ValueError("data.mix: mixup and cutmix are for classification recipes")
        clashes = {
            "cache": "the cached answers are the teacher's on unmixed inputs",
            "data.domains": "a mixed input has two domains",
            "data.synthetic": "the synthetic transfer set is mixed by synthetic.mixup",
            "pate": "the student learns the teachers' answers to public inputs",
        }
        present = {
            "cache": self.cache is not None,
            "data.domains": bool(getattr(self.data, "domains", None)),
            "data.synthetic": getattr(self.data, "synthetic", None) is not None,
            "pate": self.pate is not None,
        }
        for field, why in clashes.items():
            if present[field]:
                raise ValueError(f"data.mix: does not combine with {field} ({why}); drop one")
        for name, term in self.objective.items():
            if "labels" in loss_info(term.loss).reads and term.loss != "cross_entropy":
                raise ValueError(
                    f"objective.{name}: {term.loss} reads class ids, which data.mix turns into "
                    "mixed class probabilities (only cross_entropy reads those); drop data.mix "
                    "or the term"
                )

    def _check_peft(self) -> None:
        """LoRA students are built for one student trained once, and merged when saved."""
        if self.student.peft is None:
            return
        if self.task not in ("classification", "causal_lm", "masked_lm"):
            raise ValueError("student.peft: LoRA students are for classification and LM recipes")
        clashes = {
            "peers": self.peers > 1, "search": self.search is not None,
            "compress": bool(self.compress), "export": self.export is not None,
            "generations": self.generations > 1, "assistant": self.assistant is not None,
            "teacher.model ema": self.teacher is not None and self.teacher.model == "ema",
        }  # fmt: skip
        for field, present in clashes.items():
            if present:
                raise ValueError(f"student.peft: does not combine with {field} yet; drop one")

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


def reads_teacher(term: TermSpec) -> bool:
    return loss_info(term.loss).reads_teacher
