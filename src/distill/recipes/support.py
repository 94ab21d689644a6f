"""What combines with what: the one table of unsupported combinations, which the schema
enforces and the docs render as the support matrix (``recipes.matrix``).

A *feature* is a switch a recipe turns on (a section, a field, a kind of teacher). Two
kinds of refusal, one phrasing (``refusal``):

- task × feature: a kind of run's recipe section lists what it ``lacks`` (feature -> why
  and what to do), and a field that belongs to another kind of run's section is refused
  by name (``recipes.kinds``);
- feature × feature: ``CLASHES`` below, plus any a kind of run adds (its ``clashes``).

Every refusal reads "`<field>` does not combine with `<field>`: <why>; <what to do>".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distill.teachers.kinds import TeacherKind

Recipe = Any  # schema.Recipe, which imports this module


def refusal(first: str, second: str, reason: str) -> ValueError:
    """The one phrasing of a refused combination; ``reason`` is "<why>; <what to do>"."""
    return ValueError(f"`{first}` does not combine with `{second}`: {reason}")


def _teacher_is(kind: TeacherKind) -> Callable[[Recipe], bool]:
    return lambda r: r.teacher is not None and r.teacher.kind is kind


def _teacher_field(field: str) -> Callable[[Recipe], bool]:
    return lambda r: r.teacher is not None and getattr(r.teacher, field) is not None


@dataclass(frozen=True)
class Feature:
    """A switch a recipe turns on: ``field`` as a refusal names it, ``present`` says
    whether a validated recipe has it on, ``turn_on`` the ``--set``-style overrides that
    switch it on in a small recipe (the support matrix's test and examples)."""

    field: str
    present: Callable[[Recipe], bool]
    turn_on: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]
    about: str

    def overrides(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The overrides that turn this feature on in the recipe ``raw``."""
        return self.turn_on(raw) if callable(self.turn_on) else self.turn_on


@dataclass(frozen=True)
class Clash:
    """Two features not built together: why, and what to do (``reason``)."""

    first: str
    second: str
    reason: str


FEATURES: tuple[Feature, ...] = (
    Feature(
        "assistant",
        lambda r: getattr(r, "assistant", None) is not None,
        {"assistant": {"model": "zoo:mlp", "args": {"hidden": [16]}}},
        "a teacher assistant distilled first (TAKD)",
    ),
    Feature(
        "generations",
        lambda r: getattr(r, "generations", 1) > 1,
        {"generations": 2},
        "born-again generations",
    ),
    Feature(
        "peers",
        lambda r: getattr(r, "peers", 1) > 1,
        {"peers": 2, "objective.mutual": {"loss": "mutual_learning", "student": "stack"}},
        "online mutual learning of several students",
    ),
    Feature(
        "pate",
        lambda r: getattr(r, "pate", None) is not None,
        {
            "pate": {"teachers": 2, "public": 50, "sigma": 1.0},
            "baseline": False,
            "objective": {"ce": {"loss": "cross_entropy"}},
            "train.select_metric": None,
            "teacher.train": {"epochs": 1, "select_metric": None},
        },
        "PATE: noisy votes of partition teachers",
    ),
    Feature(
        "data.synthetic",
        lambda r: getattr(r.data, "synthetic", None) is not None,
        {"data.synthetic": {"examples": 8}, "objective": {"kd": {"loss": "kl"}}},
        "a data-free transfer set synthesised from the teacher",
    ),
    Feature(
        "data.mix",
        lambda r: getattr(r.data, "mix", None) is not None,
        {"data.mix": {"kind": "mixup"}},
        "mixup or cutmix of the students' batches (function matching)",
    ),
    Feature(
        "data.domains",
        lambda r: bool(getattr(r.data, "domains", None)),
        {"data.domains": {"low": [0, 1, 2, 3, 4], "high": [5, 6, 7, 8, 9]}},
        "a coarse domain per example, for routed teachers",
    ),
    Feature(
        "data.labeled",
        lambda r: getattr(r.data, "labeled", None) is not None,
        {"data.labeled": 100},
        "only some training examples keep their labels",
    ),
    Feature(
        "data.augment",
        lambda r: bool(getattr(r.data, "augment", False)),
        {"data.augment": True},
        "random crops and flips",
    ),
    Feature(
        "generate",
        lambda r: getattr(r, "generate", None) is not None,
        {"generate": {"prompts": "pydoc"}},
        "the teacher writes answers (sequence-level KD)",
    ),
    Feature(
        "on_policy",
        lambda r: getattr(r, "on_policy", None) is not None,
        {"on_policy": {}, "data.format": "chat"},
        "the student writes the answers the teacher scores",
    ),
    Feature("cache", lambda r: r.cache is not None, {"cache": {}}, "a teacher-output cache"),
    Feature(
        "cache.use",
        lambda r: r.cache is not None and r.cache.use,
        {"cache.use": True},
        "the student trains against the cache",
    ),
    Feature(
        "cache.top_k",
        lambda r: (
            r.cache is not None
            and "top_k" in r.cache.model_fields_set
            and r.cache.top_k is not None
        ),
        {"cache.top_k": 8},
        "a top-k cache of log-probabilities",
    ),
    Feature(
        "cache.encoding: compact",
        lambda r: r.cache is not None and r.cache.encoding == "compact",
        {"cache.encoding": "compact"},
        "top-k log-probabilities as a curve plus residual bits",
    ),
    Feature(
        "cache.hidden_states",
        lambda r: r.cache is not None and r.cache.hidden_states,
        {"cache.hidden_states": True},
        "the teacher's final hidden states and LM head",
    ),
    Feature(
        "compress",
        lambda r: bool(r.compress),
        {"compress": [{"kind": "quantize"}]},
        "pruning, factorization, quantization",
    ),
    Feature("export", lambda r: r.export is not None, {"export": {}}, "ONNX export, checked"),
    Feature(
        "search",
        lambda r: r.search is not None,
        {"search": {"candidates": [{"model": "zoo:mlp", "args": {"hidden": [16]}}]}},
        "student search",
    ),
    Feature(
        "student.peft",
        lambda r: r.student.peft is not None,
        {"student.peft": {"target_modules": ["net.0"]}},
        "LoRA adapters on the student",
    ),
    Feature(
        "student.model: teacher",
        lambda r: r.student.copies_teacher,
        {"student.model": "teacher", "student.args": {"layers": [0]}},
        "the student starts as a copy of teacher layers",
    ),
    Feature(
        "baseline",
        lambda r: r.baseline,
        {"baseline": True},
        "a label-only student with the same budget",
    ),
    Feature(
        "teacher.model: ema",
        _teacher_is(TeacherKind.EMA),
        {"teacher": {"model": "ema"}},
        "the student's moving average teaches it",
    ),
    Feature(
        "teacher.model: ensemble",
        _teacher_is(TeacherKind.ENSEMBLE),
        lambda raw: {"teacher": {"model": "ensemble", "members": [raw["teacher"]] * 2}},
        "several teachers, combined",
    ),
    Feature(
        "teacher.model: served",
        _teacher_is(TeacherKind.SERVED),
        {
            "teacher": {"model": "served:http://localhost:8000/v1"},
            "objective": {"kd": {"loss": "lm_head_kd", "temperature": 1.0}},
        },
        "a teacher on an inference server (top-k log-probs)",
    ),
    Feature(
        "teacher.tokenizer",
        _teacher_field("tokenizer"),
        {
            "teacher.tokenizer": "hf:teacher-tokenizer",
            "objective": {"kd": {"loss": "cross_tokenizer_kd"}},
        },
        "a teacher with its own tokenizer (cross-tokenizer KD)",
    ),
    Feature(
        "teacher.train",
        _teacher_field("train"),
        {"teacher.train": {"epochs": 1}},
        "the run trains its teacher",
    ),
    Feature(
        "teacher.checkpoint",
        _teacher_field("checkpoint"),
        {"teacher.checkpoint": "teacher.safetensors"},
        "the teacher's weights from a file",
    ),
)
FEATURE = {feature.field: feature for feature in FEATURES}

DROP_ONE = "drop one of the two"
CLASHES: tuple[Clash, ...] = (
    Clash("peers", "assistant", f"mutual learning trains its students together; {DROP_ONE}"),
    Clash("peers", "generations", f"mutual learning trains its students together; {DROP_ONE}"),
    Clash("search", "peers", f"student search trains one student; {DROP_ONE}"),
    Clash("search", "assistant", f"student search trains one student; {DROP_ONE}"),
    Clash("search", "generations", f"student search trains one student; {DROP_ONE}"),
    Clash("export", "peers", f"export writes one student; {DROP_ONE}"),
    Clash("compress", "peers", f"compress stages shrink one student; {DROP_ONE}"),
    Clash(
        "compress",
        "teacher.model: ema",
        "compress stages distil from the recipe's teacher; set a teacher model",
    ),
    Clash("cache", "teacher.model: ema", "the cache runs a fixed teacher once; drop cache"),
    Clash(
        "on_policy",
        "cache.use",
        "a teacher cache holds no answers to the student's own samples; set cache.use: false",
    ),
    Clash(
        "cache.hidden_states",
        "teacher.model: served",
        "a served teacher gives log-probs, not states; drop cache.hidden_states",
    ),
    Clash(
        "cache.hidden_states",
        "cache.top_k",
        "a hidden-state cache keeps every logit; drop cache.top_k",
    ),
    Clash(
        "cache.hidden_states",
        "cache.encoding: compact",
        "a hidden-state cache is not top-k log-probs; drop cache.encoding",
    ),
    Clash(
        "cache",
        "data.augment",
        "augmented inputs differ every epoch, so the teacher's cached answers would not "
        "match them; set data.augment: false or drop cache",
    ),
    Clash("cache", "assistant", "the cache serves one distilled student; drop assistant"),
    Clash("cache", "generations", "the cache serves one distilled student; drop generations"),
    Clash("cache", "peers", "the cache serves one distilled student; drop peers"),
    Clash("data.mix", "cache", "the cached answers are the teacher's on unmixed inputs; drop one"),
    Clash("data.mix", "data.domains", "a mixed input has two domains; drop one"),
    Clash(
        "data.mix",
        "data.synthetic",
        "the synthetic transfer set is mixed by synthetic.mixup; drop data.mix",
    ),
    Clash(
        "data.mix", "pate", "the student learns the teachers' answers to public inputs; drop one"
    ),
    *(
        Clash("student.peft", other, f"LoRA students are trained once and merged; {DROP_ONE}")
        for other in (
            "peers",
            "search",
            "compress",
            "export",
            "generations",
            "assistant",
            "teacher.model: ema",
        )
    ),
    *(
        Clash("data.synthetic", other, f"a synthetic transfer set is not built with it yet; {fix}")
        for other, fix in (
            ("teacher.model: ensemble", "give one teacher to invert"),
            ("teacher.model: ema", "give one teacher to invert"),
            ("cache", DROP_ONE),
            ("search", DROP_ONE),
            ("pate", DROP_ONE),
        )
    ),
    *(
        Clash("pate", other, f"the student learns only the noisy answers; {fix}")
        for other, fix in (
            ("teacher.model: ensemble", "give one teacher model to train per partition"),
            ("teacher.model: ema", "give one teacher model to train per partition"),
            ("teacher.checkpoint", "each partition trains its own teacher; drop the checkpoint"),
            ("data.labeled", "drop data.labeled"),
            ("baseline", "set baseline: false"),
            ("cache", "drop cache"),
            ("search", "drop search"),
            ("assistant", "drop assistant"),
            ("peers", "drop peers"),
            ("generations", "drop generations"),
        )
    ),
    *(
        Clash(teacher, other, f"not built together yet; drop {other}")
        for teacher, others in (
            ("teacher.tokenizer", ("teacher.train", "cache")),
            ("teacher.model: served", ("teacher.train", "teacher.checkpoint", "teacher.tokenizer")),
        )
        for other in others
    ),
    *(
        Clash(teacher, other, f"not built together yet; drop {other}")
        for teacher in ("teacher.tokenizer", "teacher.model: served")
        for other in ("generate", "on_policy", "search", "student.model: teacher")
    ),
)


def check_support(recipe: Recipe, lacks: dict[str, str], clashes: tuple[Clash, ...]) -> None:
    """Refuse the first feature ``recipe`` turns on that its kind of run ``lacks``, then the
    first pair of features it turns on that clash (the table's and its kind's own)."""
    for feature in FEATURES:
        if feature.field in lacks and feature.present(recipe):
            raise refusal(feature.field, f"task: {recipe.task}", lacks[feature.field])
    for clash in (*CLASHES, *clashes):
        if FEATURE[clash.first].present(recipe) and FEATURE[clash.second].present(recipe):
            raise refusal(clash.first, clash.second, clash.reason)
