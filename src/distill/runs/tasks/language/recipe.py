"""The recipes of ``task: causal_lm`` and ``task: masked_lm``: text in blocks
(``TextDataSpec``), and what only a causal language model's run has: teacher-written answers
(``generate``), on-policy answers (``on_policy``), a teacher with its own tokenizer and a
teacher on an inference server (``teacher.model: served:<url>``)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from distill.losses.registry import loss_info
from distill.objective import temperature_clash
from distill.recipes.schema import (
    DataSection,
    GenerateSpec,
    OnPolicySpec,
    Recipe,
    fixed_temperatures,
    reads_teacher,
)
from distill.recipes.support import Clash, refusal
from distill.teachers.kinds import TeacherKind, served_url

SERVED_ARGS = {
    "model",
    "top_k",
    "rows_per_request",
    "concurrency",
    "timeout",
    "retries",
    "api_key_env",
}
NOT_BUILT = "not built for language models yet"


class TextDataSpec(DataSection):
    """Text for language-model recipes, split by blocks into train / validation / test."""

    dataset: Literal["text"] = Field(description="text, tokenized and cut into blocks")
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
    seq_len: int = Field(128, ge=8, description="tokens per block (row)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="masked_lm only")
    val_blocks: int = Field(32, ge=1, description="held-out rows that select the best student")
    test_blocks: int = Field(48, ge=1, description="held-out rows the report is measured on")
    max_train_blocks: int | None = Field(None, ge=1, description="at most this many; None: all")
    batch_size: int = Field(8, ge=1, description="blocks per training batch")
    eval_batch_size: int = Field(8, ge=1, description="blocks per measuring batch")
    num_workers: int = Field(0, ge=0, description="data-loading processes; 0: in the main one")
    split_seed: int = Field(0, description="which blocks are held out, and masked_lm's masks")
    domain_column: str | None = Field(
        None,
        description="chat rows: the record field naming each row's domain, which routes "
        "the row to the member with that teacher.members[*].domain (teacher.combine: route)",
    )
    domain_rules: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="a regular expression (or a list of keywords, matched as whole words "
        "in any case) per member domain, searched in a chat row's prompt when no "
        "domain_column field names a member; the first that matches routes it",
    )
    default_domain: str | None = Field(
        None, description="the domain of a row no field or rule routes; None: refuse the row"
    )

    @field_validator("domain_rules")
    @classmethod
    def _rules_compile(cls, rules: dict[str, str | list[str]]) -> dict[str, str]:
        """Each rule as a regular expression (a keyword list: whole words, any case)."""
        rules = {
            domain: rf"(?i)\b(?:{'|'.join(map(re.escape, rule))})\b"
            if isinstance(rule, list)
            else rule
            for domain, rule in rules.items()
        }
        for domain, pattern in rules.items():
            if not pattern:
                raise ValueError(f"domain_rules.{domain}: an empty rule matches every prompt")
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"domain_rules.{domain}: {pattern!r} is no regular expression "
                                 f"({error})") from None  # fmt: skip
        return rules


class LanguageRecipe(Recipe):
    """What the two language-model kinds of run share: text, Hugging Face teachers and
    students, measured by perplexity and agreement with the teacher."""

    lacks: ClassVar[dict[str, str]] = {
        "compress": f"compress stages are {NOT_BUILT}; drop compress",
        "export": f"export is {NOT_BUILT}; drop export",
    }
    example: ClassVar[dict[str, Any]] = {
        "name": "tiny",
        "data": {"dataset": "text", "tokenizer": "hf:student"},
        "teacher": {"model": "hf:teacher"},
        "student": {"model": "hf:student"},
        "objective": {"kd": {"loss": "lm_head_kd", "temperature": 1.0}},
        "train": {"max_steps": 1},
        "baseline": False,
    }

    clashes: ClassVar[tuple[Clash, ...]] = (
        Clash(
            "student.model: teacher",
            "teacher.model: ensemble",
            "a student cut from the teacher needs one teacher model; name the student's model",
        ),
    )
    turn_on: ClassVar[dict[str, dict[str, Any]]] = {  # members are mixed as probabilities
        "teacher.model: ensemble": {
            "teacher": {"model": "ensemble", "members": [{"model": "hf:teacher"}] * 2},
            "objective": {"kd": {"loss": "kl", "temperature": 1.0}},
        }
    }

    data: TextDataSpec = Field(description="text, tokenized and cut into blocks")

    @model_validator(mode="after")
    def _ensemble_checks(self) -> LanguageRecipe:
        check_ensemble(self)
        return self

    def _check_domains(self) -> None:
        """``combine: route`` reads each chat row's domain from ``data.domain_column``."""
        teacher, data = self.teacher, self.data
        routed = teacher is not None and teacher.combine == "route"
        if not routed:
            for field in ("domain_column", "domain_rules"):
                if getattr(data, field):
                    raise ValueError(
                        f"data.{field} routes rows to teacher.members; set teacher.combine: route"
                    )
            return
        if not (data.domain_column or data.domain_rules) or data.format != "chat":
            raise ValueError(
                "teacher.combine: route sends each chat row to the member named by one of its "
                "fields or a rule on its prompt; set data.format: chat and data.domain_column "
                "or data.domain_rules"
            )
        names = [member.domain for member in teacher.members or []]  # type: ignore[union-attr]
        unknown = sorted(set(data.domain_rules) - set(names))
        if unknown:
            raise ValueError(f"data.domain_rules: {unknown} name no member's domain; give {names}")
        if data.default_domain is not None and data.default_domain not in names:
            raise ValueError(
                f"data.default_domain: {data.default_domain!r} is no member's domain; give one "
                f"of {names}"
            )


class CausalLMRecipe(LanguageRecipe):
    """``task: causal_lm``: next-token prediction."""

    example: ClassVar[dict[str, Any]] = {**LanguageRecipe.example, "task": "causal_lm"}
    task: Literal["causal_lm"] = Field(description="the kind of run: a causal language model")
    generate: GenerateSpec | None = Field(None, description="teacher answers (distill generate)")
    on_policy: OnPolicySpec | None = Field(None, description="the student writes the answers")

    @model_validator(mode="after")
    def _language_checks(self) -> CausalLMRecipe:
        self._check_generation()
        self._check_cache()
        check_cross_tokenizer(self)
        check_served(self)
        return self

    def _check_generation(self) -> None:
        if self.data.source == "generated":
            if self.generate is None:
                raise ValueError(
                    "data.source 'generated' reads the teacher's answers: set generate"
                )
            if self.data.format != "chat":
                raise ValueError("data.source 'generated' is a chat dataset: set data.format: chat")
        if self.generate is not None and self.teacher is None:
            raise ValueError("generate: the teacher writes the answers; set teacher")
        if self.on_policy is not None and self.data.format != "chat":
            raise ValueError(
                "on_policy: the student answers the prompts of chat rows; set data.format: chat"
            )

    def _check_cache(self) -> None:
        cache, teacher = self.cache, self.teacher
        if cache is None or teacher is None:
            return
        if cache.encoding == "compact" and not cache.top_k:
            raise ValueError("cache.encoding: compact is for a top-k cache (top_k set)")
        if teacher.members and teacher.combine != "route":
            raise refusal(
                "cache",
                f"teacher.combine: {teacher.combine}",
                "a mixture mixes its members' full distributions, which their cached answers "
                "do not hold; cache a routed teacher (teacher.combine: route) or drop cache",
            )
        if teacher.members and cache.hidden_states:
            raise refusal(
                "cache.hidden_states",
                "teacher.model: ensemble",
                "each member reads its states with its own head; cache their top-k (cache.top_k)",
            )
        if not cache.use:
            return
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


class MaskedLMRecipe(LanguageRecipe):
    """``task: masked_lm``: masked-token prediction (BERT-style)."""

    lacks: ClassVar[dict[str, str]] = {
        **LanguageRecipe.lacks,
        "cache": "masked-LM teachers are not cached (their masks change); drop cache",
        "teacher.model: served": "a served teacher answers next-token log-probs; set "
        "task: causal_lm",
        "teacher.tokenizer": "cross-tokenizer KD aligns next-token predictions; "
        "set task: causal_lm",
    }
    example: ClassVar[dict[str, Any]] = {**LanguageRecipe.example, "task": "masked_lm"}

    task: Literal["masked_lm"] = Field(description="the kind of run: a masked language model")


def check_ensemble(recipe: LanguageRecipe) -> None:
    """Language-model members share a vocabulary: local models mixed by probability or
    routed row by row (``data.domain_column``), read through full logits, or (routed, cached
    or served) through their top-k."""
    teacher = recipe.teacher
    if teacher is None or not teacher.members:
        return
    for i, member in enumerate(teacher.members):
        if member.kind not in (TeacherKind.MODEL, TeacherKind.SERVED) or member.tokenizer:
            raise ValueError(
                f"teacher.members[{i}]: a member of a language-model mixture is a local model "
                "or a served one, read with the student's tokenizer (cross-tokenizer members "
                "are not built yet); name a model"
            )
    if recipe.data.tokenizer is None:
        raise ValueError(
            "data.tokenizer: the members of a mixture share one tokenizer; name it (hf:<id or dir>)"
        )
    if getattr(recipe, "generate", None) is not None and teacher.combine != "route":
        raise refusal(
            "generate",
            f"teacher.combine: {teacher.combine}",
            "each prompt is answered by one member; set teacher.combine: route",
        )
    if teacher.tokenizer is not None:  # (set beside members: a field of the ensemble)
        raise refusal(
            "teacher.tokenizer",
            "teacher.model: ensemble",
            "the members are mixed token by token in one vocabulary; drop teacher.tokenizer",
        )
    if any(m.kind is TeacherKind.SERVED for m in teacher.members):
        check_served_members(recipe)
        return  # read through the LM-head term, each row from its own server
    cached = getattr(recipe, "cache", None) is not None and recipe.cache.use  # type: ignore[attr-defined]
    if cached and teacher.combine == "route":
        return  # each row reads its member's cached answers, through the LM-head term
    for name, term in recipe.objective.items():
        if loss_info(term.loss).lm_heads:
            raise refusal(
                f"objective.{name}",
                "teacher.model: ensemble",
                f"{term.loss} reads one teacher's LM head, but the members' logits are "
                "combined; use {loss: kl} (full logits) at teacher.temperature, or cache a "
                "routed teacher's members (cache: {top_k: 64})",
            )


def check_served_members(recipe: LanguageRecipe) -> None:
    """Served members answer their top-k: routed (all of them served), for a causal LM,
    each checked as a served teacher is."""
    teacher = recipe.teacher
    assert teacher is not None and teacher.members is not None
    if recipe.task != "causal_lm":
        raise ValueError(
            "teacher.members: a served member answers next-token log-probs; set task: causal_lm"
        )
    served = [m.kind is TeacherKind.SERVED for m in teacher.members]
    if teacher.combine != "route" or not all(served):
        wrong = served.index(teacher.combine != "route")  # a served member, or a local one
        raise ValueError(
            f"teacher.members[{wrong}]: served members answer their top-k, which is not mixed "
            "with full logits; route the rows (teacher.combine: route) to members that are "
            "all served"
        )
    for i, member in enumerate(teacher.members):
        check_served(recipe.model_copy(update={"teacher": member}), f"teacher.members[{i}]")
    ks = [member.args.get("top_k", 20) for member in teacher.members]  # (a cache: its top_k)
    if getattr(recipe, "cache", None) is None and len(set(ks)) > 1:
        raise ValueError(
            f"teacher.members[*].args.top_k: routed rows are read alike, so every member "
            f"answers the same top-k; got {ks}"
        )
    for field in ("generate", "on_policy"):
        if getattr(recipe, field, None) is not None:
            raise refusal(field, "teacher.members: served", f"not built together yet; drop {field}")


def check_cross_tokenizer(recipe: CausalLMRecipe) -> None:
    teacher = recipe.teacher
    crossed = teacher is not None and teacher.tokenizer is not None
    reading = [n for n, t in recipe.objective.items() if t.loss == "cross_tokenizer_kd"]
    if not crossed:
        if reading:
            raise ValueError(
                f"objective.{reading[0]}: cross_tokenizer_kd needs teacher.tokenizer (the "
                "teacher's own tokenizer) and data.tokenizer (the student's)"
            )
        return
    if recipe.data.tokenizer is None:
        raise ValueError(
            "teacher.tokenizer: cross-tokenizer KD needs data.tokenizer set to the student's "
            "tokenizer"
        )
    for name, term in recipe.objective.items():
        if loss_info(term.loss).reads_teacher and term.loss != "cross_tokenizer_kd":
            raise refusal(
                f"objective.{name}",
                "teacher.tokenizer",
                f"{term.loss} compares logits position by position, but the teacher has "
                "another tokenizer; use {loss: cross_tokenizer_kd}",
            )


def check_served(recipe: LanguageRecipe, where: str = "teacher") -> None:
    """A served teacher (or ``where``: a served member, given as the recipe's teacher)."""
    teacher = recipe.teacher
    if teacher is None or teacher.kind is not TeacherKind.SERVED:
        return
    url = served_url(teacher.model)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}.model: served:<http(s) url of the API>, got {teacher.model!r}")
    if "api_key" in teacher.args:
        raise ValueError(
            f"{where}.args.api_key: a key is never written in a recipe (the recipe is copied "
            "into the run, its summary and model card); put it in an environment variable "
            f"and name that: {where}.args.api_key_env: VLLM_API_KEY"
        )
    variable = teacher.args.get("api_key_env")
    if variable is not None and not (isinstance(variable, str) and variable.isidentifier()):
        raise ValueError(
            f"{where}.args.api_key_env: the name of an environment variable, got {variable!r}"
        )
    unknown = sorted(set(teacher.args) - SERVED_ARGS)
    if unknown:
        raise ValueError(
            f"{where}.args: a served teacher takes {', '.join(sorted(SERVED_ARGS))}; got {unknown}"
        )
    top_k = teacher.args.get("top_k")
    cache = getattr(recipe, "cache", None)
    if cache is not None and (cache.top_k is None or top_k not in (None, cache.top_k)):
        raise ValueError(
            "cache.top_k: a served teacher answers with its top-k log-probs; give cache.top_k "
            f"(and {where}.args.top_k, if set, the same: now {top_k})"
        )
    for name, term in recipe.objective.items():
        info = loss_info(term.loss)
        if info.reads_teacher and not info.lm_heads:
            raise refusal(
                f"objective.{name}",
                f"{where}.model: served",
                "a served teacher gives top-k log-probs, not logits or features; use "
                "{loss: lm_head_kd} (read as its sparse form)",
            )
    clash = temperature_clash(fixed_temperatures(recipe.objective), 1.0)
    if clash is not None:
        raise refusal(
            f"objective.{clash[0]}.temperature",
            f"{where}.model: served",
            "a served teacher answers at temperature 1 (the server's log-probs); set 1.0",
        )
