"""``task: causal_lm`` and ``task: masked_lm``: text split into train / validation / test
rows, Hugging Face teachers and students (loaded, built from a config, or the teacher with
fewer layers), all measured on the test rows: perplexity (exp of the mean token
cross-entropy), next-token (or masked-token) agreement with the teacher, token accuracy,
parameters, size on disk and CPU latency per sequence. Students are also saved in Hugging
Face format (``student/``, with the tokenizer) so ``from_pretrained`` loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from distill.cache import Layout
from distill.doctor.plots import plot_language
from distill.errors import RecipeError
from distill.methods.on_policy import OnPolicy
from distill.models import hf
from distill.recipes import ModelSpec, Recipe
from distill.runs.fitting import AUTOCAST, teacher_module
from distill.runs.report.tables import SummaryLayout, register_layout
from distill.runs.stages.cache import cache_temperature, cache_vocab_size, make_layout
from distill.runs.store import fit_and_store_teacher, reuse_or_train, train_again
from distill.runs.task import (
    Cacheable,
    CacheMember,
    Diagnosable,
    Drafts,
    Generates,
    Pushable,
    RewritesBatches,
    SavesStudent,
    Searchable,
    Task,
    WrapsTeacher,
    loader,
)
from distill.runs.tasks.language.data import TextData, prepare_text
from distill.runs.tasks.language.doctor import diagnose_language
from distill.runs.tasks.language.generate import (
    ensure_generated,
    generate_teacher_answers,
)
from distill.runs.tasks.language.models import (
    build_lm,
    build_teacher,
    is_served,
    own_token_rows,
    routed_served,
    served_members,
    served_teacher,
    text_spec,
    tokenizer_for,
)
from distill.runs.tasks.language.report import domain_figures
from distill.runs.tasks.language.speculative import draft_folder, measure_draft
from distill.runs.workdir import HF_STUDENT_DIR, Log, files_under, verify_finished
from distill.teachers import CrossTokenizer, EnsembleModel, RoutedServed, Teacher, is_remote
from distill.teachers.served import pooled
from distill.training import Distiller


def get_lm_teacher(
    recipe: Recipe, tokenizer: Any, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher as named; with ``teacher.train`` it is first fine-tuned on the train
    blocks (label cross-entropy) and cached, keyed by everything that shapes it."""
    spec = recipe.teacher
    assert spec is not None
    if spec.members:
        return get_lm_ensemble(recipe, tokenizer, data, progress, log)
    model = build_teacher(recipe, tokenizer)
    if spec.train is None:
        if spec.model.startswith("hf-config:") and spec.checkpoint is None:
            raise RecipeError(
                "teacher: an hf-config model starts random; give teacher.train or a checkpoint"
            )
        log(f"teacher {spec.model}: loaded, not trained")
        return model.eval(), {"model": spec.model, "train_seconds": 0.0}
    return reuse_or_train(
        recipe, lambda: model, lambda: train_lm_teacher(recipe, model, data, progress, log), log
    )


def get_lm_ensemble(
    recipe: Recipe, tokenizer: Any, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """``teacher.members``, each got as a teacher is (loaded, or fine-tuned and stored),
    mixed token by token as ``T · log Σ_i w_i softmax(z_i / T)`` (``teachers.EnsembleModel``);
    the members must share one vocabulary."""
    spec = recipe.teacher
    assert spec is not None and spec.members is not None
    members, infos = [], []
    for i, member in enumerate(spec.members):
        log(f"teacher.members[{i}]: {member.model}")
        alone = recipe.model_copy(update={"teacher": member})
        try:
            model, info = get_lm_teacher(alone, tokenizer, data, progress, log)
        except RecipeError as error:  # name the member, not "teacher"
            raise RecipeError(str(error).replace("teacher", f"teacher.members[{i}]", 1)) from None
        members.append(model)
        infos.append(info)
    sizes = [model.get_output_embeddings().weight.shape[0] for model in members]
    if len(set(sizes)) > 1:
        raise RecipeError(
            f"teacher.members: their vocabularies hold {sizes} tokens; a mixture reads one "
            "vocabulary (members with other tokenizers are not built yet)"
        )
    mixed = EnsembleModel(members, spec.combine, weights=spec.weights, temperature=spec.temperature)
    seconds = sum(info["train_seconds"] for info in infos)
    return mixed.eval(), {"model": "ensemble", "train_seconds": seconds, "members": infos}


def train_lm_teacher(
    recipe: Recipe, model: nn.Module, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune (or train) the teacher with ``teacher.train`` on the train rows; cache it."""
    spec = recipe.teacher
    if spec is None or spec.train is None:
        raise RecipeError("teacher.train is not set: the recipe says nothing about how to train it")
    log(f"training the teacher {spec.model} on {len(data.train):,} rows")  # type: ignore[arg-type]
    torch.manual_seed(recipe.seed)
    info = fit_and_store_teacher(
        recipe,
        model,
        loader(data.train, recipe, True),
        loader(data.val, recipe, False),
        progress,
        log,
        val_extras=lambda val: {"perplexity": math.exp(val["loss"])},
    )
    return model.eval(), info


class Language(Task, WrapsTeacher, SavesStudent, Diagnosable, Searchable, Pushable):
    """``task: causal_lm`` or ``task: masked_lm`` (``CausalLM``, ``MaskedLM``)."""

    kind: hf.Task = "causal"
    checks = "own"

    def own_checks(self, sample: int, progress: bool, log: Log) -> tuple[list[Any], list[str]]:
        """The language-model checks (``doctor``)."""
        return diagnose_language(self, sample=sample, progress=progress, log=log)

    def plot_checks(self, findings: list[Any], out_dir: Path) -> dict[str, Path]:
        return plot_language(findings, out_dir)

    search_metric = "loss"
    students_from_teacher = True
    hub_library = "transformers"
    auto_class = "AutoModelForCausalLM"  # what loads a pushed student
    data: TextData

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        self.cross_teacher: nn.Module | None = None  # a teacher with its own tokenizer

    def prepare(self, progress: bool, log: Log) -> TextData:
        recipe = self.recipe
        if recipe.teacher is None:
            raise RecipeError("teacher: a language-model recipe needs a teacher")
        data = prepare_text(recipe, tokenizer_for(recipe))
        if recipe.teacher.tokenizer is not None:
            try:
                data.teacher_tokenizer = hf.load_tokenizer(recipe.teacher.tokenizer)
            except (OSError, ValueError, ImportError) as error:
                raise RecipeError(f"teacher.tokenizer: cannot load it ({error})") from None
            data.regime += (
                f"; the teacher reads the text with its own tokenizer ({recipe.teacher.tokenizer})"
            )
        self.data = data
        return data

    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        recipe, data = self.recipe, self.data
        if is_served(recipe):  # answers over HTTP: nothing to load or train here
            served = served_teacher(recipe, data.tokenizer, log)
            return served, {"model": recipe.teacher.model, "train_seconds": 0.0}  # type: ignore[union-attr,return-value]
        if served_members(recipe):  # each member on its own server, routed row by row
            return routed_served(recipe, data.tokenizer, log)  # type: ignore[return-value]
        tokenizer = data.teacher_tokenizer or data.tokenizer
        teacher, info = get_lm_teacher(recipe, tokenizer, data, progress, log)
        if data.teacher_tokenizer is not None:
            self.cross_teacher = teacher
        return teacher.eval().requires_grad_(False), info

    def live_teacher(self, model: nn.Module) -> Teacher:
        """With ``teacher.tokenizer``, the teacher reads the student's text with its own."""
        recipe, data = self.recipe, self.data
        assert recipe.teacher is not None
        if is_remote(model):
            return model  # type: ignore[return-value]
        if data.teacher_tokenizer is None:
            return teacher_module(recipe, model)
        autocast = AUTOCAST[recipe.teacher.autocast]
        return CrossTokenizer(model, data.tokenizer, data.teacher_tokenizer, autocast)

    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        recipe, data = self.recipe, self.data
        if is_served(recipe):
            raise RecipeError("teacher.model: a served teacher is not trained here; nothing to do")
        model = build_teacher(recipe, data.tokenizer)
        return train_again(
            recipe, lambda: train_lm_teacher(recipe, model, data, progress, log), log
        )

    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        return build_lm(spec, self.recipe, self.data.tokenizer, teacher=teacher, data=self.data)

    def load_student(self, run_dir: Path) -> nn.Module:
        """The Hugging Face folder the run saved (``student/``), its checksums verified."""
        folder = Path(run_dir) / HF_STUDENT_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{run_dir} holds no student/ folder; did the run finish?")
        verify_finished(run_dir)
        return hf.auto_class(self.kind).from_pretrained(folder)

    def evaluate(self, model: nn.Module, judge: Teacher | None) -> dict[str, Any]:
        data, recipe = self.data, self.recipe
        if is_remote(model):  # the servers' log-probs of the test tokens, each row asked once
            parts = {n: r for n, r in (data.test_by_domain or {"": data.test}).items() if len(r)}  # type: ignore[arg-type]
            measured = {n: model.measure(loader(r, recipe, False)) for n, r in parts.items()}  # type: ignore[attr-defined]
            metrics = pooled(list(measured.values()))
            metrics |= {f"perplexity_{n}": math.exp(m["loss"]) for n, m in measured.items() if n}
        elif model is self.cross_teacher:  # it reads the test text in its own tokens
            rows = own_token_rows(data.test, data.tokenizer, data.teacher_tokenizer)
            metrics = Distiller(model, progress=False).evaluate(loader(rows, recipe, False))
        else:
            metrics = super().evaluate(model, judge)
            metrics |= self.per_domain(model, judge)
        return {**metrics, "perplexity": math.exp(metrics["loss"])}

    def per_domain(self, model: nn.Module, judge: Teacher | None) -> dict[str, float]:
        """With a routed teacher: perplexity (and agreement with ``judge``, the teacher)
        on each member's test rows, as ``perplexity_<domain>``, ``teacher_agreement_<domain>``."""
        found: dict[str, float] = {}
        for name, rows in (self.data.test_by_domain or {}).items():
            if not len(rows):  # type: ignore[arg-type]
                continue
            measured = Distiller(model, judge, progress=False).evaluate(
                loader(rows, self.recipe, False)
            )
            found[f"perplexity_{name}"] = math.exp(measured["loss"])
            if "teacher_agreement" in measured:
                found[f"teacher_agreement_{name}"] = measured["teacher_agreement"]
        return found

    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        data = self.data
        if model is self.cross_teacher:
            rows = own_token_rows(data.test, data.tokenizer, data.teacher_tokenizer)
            return rows[0]["input_ids"], {}
        first = data.test[0]
        if isinstance(model, EnsembleModel) and model.combine == "route":  # with its domain
            return first["input_ids"], {"domain": first["domain"].reshape(1)}
        return first["input_ids"], {}

    def save_student(self, student: nn.Module, run_dir: Path) -> list[str]:
        """A Hugging Face folder too, loadable with ``from_pretrained``."""
        folder = run_dir / HF_STUDENT_DIR
        student.save_pretrained(folder)  # type: ignore[operator]
        self.data.tokenizer.save_pretrained(folder)
        return files_under(run_dir, folder)

    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        recipe = self.recipe
        ratio = None
        if "baseline" in models:
            ratio = models["student"]["perplexity"] / models["baseline"]["perplexity"]
        own = recipe.teacher.tokenizer if recipe.teacher else None
        before = {"task": recipe.task, "dataset": f"text ({text_spec(recipe).source})"}
        before["teacher_tokenizer"] = own
        before |= self.data.provenance  # a routed teacher: how many rows each member taught
        return before, {"perplexity_ratio": ratio, "gap_closed": None}

    def hub_student(self, run_dir: Path, folder: Path, log: Log) -> None:
        """The run saved it in Hugging Face's format (``save_student``)."""
        if not folder.is_dir():
            raise FileNotFoundError(f"{run_dir}: no {HF_STUDENT_DIR}/ folder; did the run finish?")

    def hub_usage(self) -> list[str]:
        return [
            f"from transformers import {self.auto_class}, AutoTokenizer",
            f'model = {self.auto_class}.from_pretrained("<this repository>")',
            'tokenizer = AutoTokenizer.from_pretrained("<this repository>")',
        ]

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"test perplexity {metrics['perplexity']:.2f}, token accuracy "
            f"{100 * metrics['accuracy']:.1f}% ({int(metrics['examples']):,} tokens)"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"validation perplexity {info['val']['perplexity']:.2f}"


class CausalLM(Language, Cacheable, Generates, RewritesBatches, Drafts):
    """``task: causal_lm``: also a teacher cache, teacher-written data and on-policy
    answers."""

    name = "causal_lm"
    kind = "causal"
    pipeline_tag = "text-generation"
    cache_example = "cache: {top_k: 64} (see recipes/llm_cached_kd.yaml)"

    def prepare(self, progress: bool, log: Log) -> TextData:
        if self.recipe.generate is not None:  # sequence-level KD data first (or checked)
            ensure_generated(self.recipe, progress, log)
        return super().prepare(progress, log)

    def generate(self, progress: bool, log: Log) -> Path:
        return generate_teacher_answers(self.recipe, progress=progress, log=log)

    def measure_draft(self, run_dir: Path, *, row: str, log: Log, **options: Any) -> dict[str, Any]:
        folder = draft_folder(self.recipe, run_dir, row)
        self.data = prepare_text(self.recipe, tokenizer_for(self.recipe))
        return measure_draft(self, folder, row=row, log=log, **options)

    def batch_transform(self, student: nn.Module) -> OnPolicy | None:
        spec, tokenizer = self.recipe.on_policy, self.data.tokenizer
        if spec is None:
            return None
        return OnPolicy(
            student,
            lam=spec.lam,
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=self.recipe.seed,
        )

    def cache_rows(self) -> Dataset:
        """Training then validation rows (ids stay the rows' own)."""
        train, val = self.data.student_train, self.data.val
        assert isinstance(train, Subset) and isinstance(val, Subset)
        return Subset(train.dataset, [*train.indices, *val.indices])

    def cache_layout(
        self, teacher: nn.Module, rows: int, fingerprint: dict[str, Any] | None = None
    ) -> Layout:
        """Top-k per token (or dense with ``top_k: null``) at the KD term's temperature, or
        the final hidden states (``hidden_states``); ``fingerprint``: the teacher's unless
        given (a routed member's)."""
        recipe = self.recipe
        assert recipe.cache is not None
        fingerprint = fingerprint or self.cache_fingerprint()
        if recipe.cache.hidden_states:
            return make_layout(
                recipe,
                kind="hidden",
                num_examples=rows,
                hidden_size=teacher.config.hidden_size,
                fingerprint=fingerprint,
            )
        top_k = recipe.cache.top_k
        return make_layout(
            recipe,
            kind="dense" if top_k is None else "topk",
            num_examples=rows,
            k=top_k,
            temperature=cache_temperature(recipe),
            vocab_size=cache_vocab_size(recipe, teacher, self.data.tokenizer),
            fingerprint=fingerprint,
        )

    def cache_fingerprint(self) -> dict[str, Any]:
        return lm_cache_fingerprint(self.recipe, self.data.tokenizer)

    def cache_members(self, teacher: nn.Module) -> list[CacheMember]:
        """A routed teacher's members, each on the cache rows routed to it; the member's
        fingerprint also digests those rows' ids, so a cache built under other routing is
        caught."""
        spec = self.recipe.teacher
        if isinstance(teacher, RoutedServed):
            models: list[Any] = list(teacher.members.values())
        elif isinstance(teacher, EnsembleModel) and teacher.combine == "route":
            models = list(teacher.members)
        else:
            return []
        assert spec is not None and spec.members is not None
        rows = self.cache_rows()
        domains = [int(rows[i]["domain"]) for i in range(len(rows))]  # type: ignore[arg-type]
        members = []
        for index, (member, model) in enumerate(zip(spec.members, models, strict=True)):
            mine = [i for i, domain in enumerate(domains) if domain == index]
            name = member.domain or str(index)
            if not mine:
                raise RecipeError(
                    f"teacher.members[{index}] ({name}): no training or validation row is "
                    "routed to it, so it has nothing to cache; drop it or check data.domain_column"
                )
            ids = sorted(int(rows[i]["example_id"]) for i in mine)
            fingerprint = lm_cache_fingerprint(
                self.recipe.model_copy(update={"teacher": member}), self.data.tokenizer
            ) | {"rows": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]}
            layout = self.cache_layout(model, len(mine), fingerprint)
            members.append(CacheMember(name, model, Subset(rows, mine), layout))
        return members


def lm_cache_fingerprint(recipe: Recipe, tokenizer: Any) -> dict[str, Any]:
    """What a language-model teacher's cached answers depend on besides the inputs: the
    teacher (a served one by the model it answers with, on any host), its tokenizer and
    the text's cut."""
    assert recipe.teacher is not None
    spec = text_spec(recipe)
    teacher, args = recipe.teacher.model, dict(recipe.teacher.args)
    if is_served(recipe) and "model" in args:
        teacher, args = f"served:{args['model']}", {}
    elif is_served(recipe):
        args = {}  # timeouts and concurrency do not change the answers
    return {
        "teacher": teacher,
        "teacher_args": args,
        "teacher_checkpoint": str(recipe.teacher.checkpoint or ""),
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "tokenizer_size": len(tokenizer),
        "seq_len": spec.seq_len,
        "source": spec.source,
        "format": spec.format,
    }


class MaskedLM(Language):
    """``task: masked_lm``."""

    name = "masked_lm"
    kind = "masked"
    pipeline_tag = "fill-mask"
    auto_class = "AutoModelForMaskedLM"


for _task in (CausalLM, MaskedLM):
    register_layout(_task.name, SummaryLayout(headline="perplexity", figures=domain_figures))
