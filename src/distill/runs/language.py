"""``task: causal_lm`` and ``task: masked_lm``: text split into train / validation / test
rows, Hugging Face teachers and students (loaded, built from a config, or the teacher with
fewer layers), all measured on the test rows: perplexity (exp of the mean token
cross-entropy), next-token (or masked-token) agreement with the teacher, token accuracy,
parameters, size on disk and CPU latency per sequence. Students are also saved in Hugging
Face format (``student/``, with the tokenizer) so ``from_pretrained`` loads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from distill.cache import Layout
from distill.data.text import ChatExamples, MaskedBlocks, PackedText, text_records
from distill.errors import RecipeError
from distill.measure import parameter_count, size_on_disk
from distill.methods.generated_data import read_generations
from distill.methods.on_policy import OnPolicy
from distill.models import hf
from distill.recipes import ModelSpec, Recipe
from distill.runs.cache import cache_temperature, cache_vocab_size, make_layout
from distill.runs.common import (
    AUTOCAST,
    Log,
    Splits,
    Task,
    loader,
    teacher_module,
)
from distill.runs.generate import ensure_generated, generated_path
from distill.runs.language_models import (
    build_lm,
    build_teacher,
    hf_task,
    is_served,
    own_token_rows,
    served_teacher,
    text_spec,
    tokenizer_for,
)
from distill.runs.store import fit_and_store_teacher, store_lock, stored_teacher, teacher_cache_dir
from distill.runs.workdir import files_under, verify_finished
from distill.teachers import CrossTokenizer, Served, Teacher
from distill.training import Distiller

HF_STUDENT_DIR = "student"


@dataclass
class TextData(Splits):
    """A language-model run's rows (the distilled and the label-only students train on the
    same ones) and the tokenizer that made them."""

    tokenizer: Any
    teacher_tokenizer: Any = None  # teacher.tokenizer: the teacher's own, not the student's
    cross_teacher: nn.Module | None = None  # that teacher, once built

    @property
    def train(self) -> Dataset:
        return self.student_train


def source_records(recipe: Recipe) -> list[dict[str, Any]]:
    """The records of ``data.source`` (generated: the teacher's answers, checked)."""
    spec = text_spec(recipe)
    try:
        if spec.source == "generated":
            return read_generations(generated_path(recipe))[0]
        return text_records(spec.source)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise RecipeError(f"data.source: {error}") from None


def prepare_text(recipe: Recipe, tokenizer: Any) -> TextData:
    spec = text_spec(recipe)
    records = source_records(recipe)
    if recipe.task == "masked_lm":
        rows: Dataset = MaskedBlocks(
            records, tokenizer, spec.seq_len, spec.mlm_probability, seed=spec.split_seed
        )
    elif spec.format == "chat":
        rows = ChatExamples(records, tokenizer, spec.seq_len)
    else:
        rows = PackedText(records, tokenizer, spec.seq_len)
    total = len(rows)  # type: ignore[arg-type]
    held = spec.test_blocks + spec.val_blocks
    if held >= total:
        raise RecipeError(
            f"data: {total} rows of {spec.seq_len} tokens, but val_blocks + test_blocks = {held}; "
            "lower them or give more text"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(spec.split_seed))
    order_list = order.tolist()
    test = Subset(rows, order_list[: spec.test_blocks])
    val = Subset(rows, order_list[spec.test_blocks : held])
    train_ids = order_list[held:]
    if spec.max_train_blocks is not None:
        train_ids = train_ids[: spec.max_train_blocks]
    regime = (
        f"{spec.source} text, {len(train_ids):,} train / {len(val):,} validation / "
        f"{len(test):,} test rows of {spec.seq_len} tokens"
    )
    train = Subset(rows, train_ids)
    return TextData(
        student_train=train, baseline_train=train, val=val, test=test, regime=regime,
        tokenizer=tokenizer,
    )  # fmt: skip


def get_lm_teacher(
    recipe: Recipe, tokenizer: Any, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher as named; with ``teacher.train`` it is first fine-tuned on the train
    blocks (label cross-entropy) and cached, keyed by everything that shapes it."""
    spec = recipe.teacher
    assert spec is not None
    model = build_teacher(recipe, tokenizer)
    if spec.train is None:
        if spec.model.startswith("hf-config:") and spec.checkpoint is None:
            raise RecipeError(
                "teacher: an hf-config model starts random; give teacher.train or a checkpoint"
            )
        log(f"teacher {spec.model}: loaded, not trained")
        return model.eval(), {"model": spec.model, "train_seconds": 0.0}
    with store_lock(teacher_cache_dir(recipe), log):  # another run may be training it
        stored = stored_teacher(recipe, lambda: model, log)
        return (
            stored if stored is not None else train_lm_teacher(recipe, model, data, progress, log)
        )


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


class Language(Task):
    """``task: causal_lm`` or ``task: masked_lm``."""

    cache_example = "cache: {top_k: 64} (see recipes/llm_cached_kd.yaml)"
    diagnosable = True  # doctor.language

    def __init__(self, kind: hf.Task) -> None:
        self.kind = kind
        self.name = f"{kind}_lm"
        self.generates = kind == "causal"  # a masked LM writes no answers

    def prepare(self, recipe: Recipe, progress: bool, log: Log) -> TextData:
        if recipe.teacher is None:
            raise RecipeError("teacher: a language-model recipe needs a teacher")
        if recipe.generate is not None:  # sequence-level KD data first (or checked)
            ensure_generated(recipe, progress, log)
        data = prepare_text(recipe, tokenizer_for(recipe))
        if recipe.teacher.tokenizer is not None:
            try:
                data.teacher_tokenizer = hf.load_tokenizer(recipe.teacher.tokenizer)
            except (OSError, ValueError, ImportError) as error:
                raise RecipeError(f"teacher.tokenizer: cannot load it ({error})") from None
            data.regime += (
                f"; the teacher reads the text with its own tokenizer ({recipe.teacher.tokenizer})"
            )
        return data

    def teacher(
        self, recipe: Recipe, data: Splits, progress: bool, log: Log
    ) -> tuple[nn.Module, dict[str, Any]]:
        assert isinstance(data, TextData)
        if is_served(recipe):  # answers over HTTP: nothing to load or train here
            served = served_teacher(recipe, data.tokenizer, log)
            return served, {"model": recipe.teacher.model, "train_seconds": 0.0}  # type: ignore[union-attr,return-value]
        tokenizer = data.teacher_tokenizer or data.tokenizer
        teacher, info = get_lm_teacher(recipe, tokenizer, data, progress, log)
        if data.teacher_tokenizer is not None:
            data.cross_teacher = teacher
        return teacher.eval().requires_grad_(False), info

    def live_teacher(self, recipe: Recipe, data: Splits, model: nn.Module) -> Teacher:
        """With ``teacher.tokenizer``, the teacher reads the student's text with its own."""
        assert isinstance(data, TextData) and recipe.teacher is not None
        if isinstance(model, Served):
            return model
        if data.teacher_tokenizer is None:
            return teacher_module(recipe, model)
        autocast = AUTOCAST[recipe.teacher.autocast]
        return CrossTokenizer(model, data.tokenizer, data.teacher_tokenizer, autocast)

    def train_teacher(self, recipe: Recipe, data: Splits, progress: bool, log: Log) -> dict:
        assert isinstance(data, TextData) and recipe.teacher is not None
        if is_served(recipe):
            raise RecipeError("teacher.model: a served teacher is not trained here; nothing to do")
        model = build_teacher(recipe, data.tokenizer)
        with store_lock(teacher_cache_dir(recipe), log):
            return train_lm_teacher(recipe, model, data, progress, log)[1]

    def build_student(
        self, recipe: Recipe, data: Splits, spec: ModelSpec, teacher: nn.Module | None
    ) -> nn.Module:
        assert isinstance(data, TextData)
        return build_lm(spec, recipe, data.tokenizer, teacher=teacher, data=data)

    def batch_transform(self, recipe: Recipe, data: Splits, student: nn.Module) -> OnPolicy | None:
        assert isinstance(data, TextData)
        spec = recipe.on_policy
        if spec is None:
            return None
        return OnPolicy(
            student,
            lam=spec.lam,
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            pad_token_id=data.tokenizer.pad_token_id,
            eos_token_id=data.tokenizer.eos_token_id,
            seed=recipe.seed,
        )

    def evaluate(
        self, model: nn.Module, recipe: Recipe, data: Splits, judge: Teacher | None
    ) -> dict[str, Any]:
        assert isinstance(data, TextData)
        if isinstance(model, Served):  # the server's log-probs of the test tokens
            metrics = model.measure(loader(data.test, recipe, False))
        elif model is data.cross_teacher and data.cross_teacher is not None:  # its own tokens
            rows = own_token_rows(data.test, data.tokenizer, data.teacher_tokenizer)
            metrics = Distiller(model, progress=False).evaluate(loader(rows, recipe, False))
        else:
            metrics = super().evaluate(model, recipe, data, judge)
        return {**metrics, "perplexity": math.exp(metrics["loss"])}

    def describe(
        self, model: nn.Module, recipe: Recipe, data: Splits, weights: Path | None = None
    ) -> dict[str, Any]:
        if isinstance(model, Served):  # another machine's model: neither is known here
            return {"parameters": None, "size_bytes": None}
        return {"parameters": parameter_count(model), "size_bytes": size_on_disk(model, weights)}

    def latency_input(self, model: nn.Module, data: Splits) -> tuple[Tensor, dict[str, Any]]:
        assert isinstance(data, TextData)
        if model is data.cross_teacher and data.cross_teacher is not None:
            return own_token_rows(data.test, data.tokenizer, data.teacher_tokenizer)[0][
                "input_ids"
            ], {}
        return data.test[0]["input_ids"], {}

    def save_student(self, student: nn.Module, run_dir: Path, data: Splits) -> list[str]:
        """A Hugging Face folder too, loadable with ``from_pretrained``."""
        assert isinstance(data, TextData)
        folder = run_dir / HF_STUDENT_DIR
        student.save_pretrained(folder)  # type: ignore[operator]
        data.tokenizer.save_pretrained(folder)
        return files_under(run_dir, folder)

    def cache_rows(self, data: Splits) -> Dataset:
        """Training then validation rows (ids stay the rows' own)."""
        train, val = data.student_train, data.val
        assert isinstance(train, Subset) and isinstance(val, Subset)
        return Subset(train.dataset, [*train.indices, *val.indices])

    def cache_layout(self, recipe: Recipe, data: Splits, teacher: nn.Module, rows: int) -> Layout:
        """Top-k per token (or dense with ``top_k: null``) at the KD term's temperature, or
        the final hidden states (``hidden_states``)."""
        assert recipe.cache is not None and isinstance(data, TextData)
        if recipe.cache.hidden_states:
            return make_layout(
                recipe, kind="hidden", num_examples=rows, hidden_size=teacher.config.hidden_size,
                fingerprint=self.cache_fingerprint(recipe, data),
            )  # fmt: skip
        top_k = recipe.cache.top_k
        return make_layout(
            recipe,
            kind="dense" if top_k is None else "topk",
            num_examples=rows,
            k=top_k,
            temperature=cache_temperature(recipe),
            vocab_size=cache_vocab_size(recipe, teacher, data.tokenizer),
            fingerprint=self.cache_fingerprint(recipe, data),
        )

    def cache_fingerprint(self, recipe: Recipe, data: Splits) -> dict[str, Any]:
        assert isinstance(data, TextData) and recipe.teacher is not None
        spec = text_spec(recipe)
        tokenizer = data.tokenizer
        teacher, args = recipe.teacher.model, dict(recipe.teacher.args)
        if is_served(recipe) and "model" in args:  # its answers: the model's, on any host
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

    def summary_fields(
        self, recipe: Recipe, data: Splits, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        ratio = None
        if "baseline" in models:
            ratio = models["student"]["perplexity"] / models["baseline"]["perplexity"]
        own = recipe.teacher.tokenizer if recipe.teacher else None
        before = {"task": recipe.task, "dataset": f"text ({text_spec(recipe).source})"}
        before["teacher_tokenizer"] = own
        return before, {"perplexity_ratio": ratio, "gap_closed": None}

    def evaluate_run(self, run_dir: Path, recipe: Recipe) -> dict[str, float]:
        folder = Path(run_dir) / HF_STUDENT_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"{run_dir} holds no student/ folder; did the run finish?")
        verify_finished(run_dir)
        data = prepare_text(recipe, tokenizer_for(recipe))
        student = hf.auto_class(hf_task(recipe)).from_pretrained(folder)
        return self.evaluate(student, recipe, data, None)

    def describe_eval(self, metrics: dict[str, float]) -> str:
        return (
            f"test perplexity {metrics['perplexity']:.2f}, token accuracy "
            f"{100 * metrics['accuracy']:.1f}% ({int(metrics['examples']):,} tokens)"
        )

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"validation perplexity {info['val']['perplexity']:.2f}"
