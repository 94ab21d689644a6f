"""The models a language-model recipe names: ``hf:`` (loaded), ``hf-config:`` (built from a
config, random weights) and, for the student, ``teacher``: a copy of the teacher with fewer
layers (``keep``, ``select``) and narrower MLPs (``width``, Minitron-style)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from distill.data.text import prompt_text
from distill.errors import RecipeError
from distill.methods.cross_tokenizer import token_texts
from distill.models import hf
from distill.models.narrow import narrowed
from distill.models.shrink import student_from_teacher
from distill.recipes import ModelSpec, Recipe
from distill.runs.task import Splits
from distill.runs.tasks.language.recipe import TextDataSpec
from distill.teachers import RoutedServed, Served
from distill.teachers.kinds import TeacherKind, served_url
from distill.training import checkpoint as ckpt

CALIBRATION_BLOCKS = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_task(recipe: Recipe) -> hf.Task:
    return "causal" if recipe.task == "causal_lm" else "masked"


def calibration_rows(data: Splits) -> dict[str, torch.Tensor]:
    count = min(CALIBRATION_BLOCKS, len(data.student_train))  # type: ignore[arg-type]
    rows = [data.student_train[i] for i in range(count)]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "labels"}


# a student made from the teacher: the width-pruning axes its args name (models.narrow)
NARROWING_AXES = ("width", "heads", "hidden")


def build_lm(
    spec: ModelSpec,
    recipe: Recipe,
    tokenizer: Any,
    *,
    teacher: nn.Module | None = None,
    data: Splits | None = None,
    where: str = "student",
) -> nn.Module:
    """The model a language-model recipe names (see ``ModelSpec``), with its weights."""
    kind, _, name = spec.model.partition(":")
    args = dict(spec.args)
    if spec.copies_teacher:
        if teacher is None or where != "student":
            raise RecipeError(f"{where}.model: only the student can be made from the teacher")
        keep = args.pop("keep", "every_other")
        select = args.pop("select", "similarity" if isinstance(keep, int) else "uniform")
        shares = {name: args.pop(name, 1.0) for name in NARROWING_AXES}
        if args or select not in ("similarity", "uniform"):
            raise RecipeError(
                f"{where}.args: a student made from the teacher takes keep (a count, a list "
                "of layer indices or every_other), select (similarity or uniform), width "
                "(the share of MLP neurons kept), heads (of query heads per key/value "
                f"group) and hidden (of residual channels); got {spec.args}"
            )
        calibration = calibration_rows(data) if data else None
        try:
            model = student_from_teacher(
                teacher, keep, calibration=calibration if select == "similarity" else None
            )
        except ValueError as error:
            raise RecipeError(f"{where}.args.keep: {error}") from None
        narrower = [name for name, share in shares.items() if share != 1.0]
        if narrower and calibration is None:
            raise RecipeError(f"{where}.args.{narrower[0]}: width pruning needs the recipe's data")
        if narrower:
            try:
                narrowed(model, calibration, **shares)
            except (ValueError, TypeError) as error:  # "<axis>: why"
                raise RecipeError(f"{where}.args.{error}") from None
    elif kind == "hf-config":
        fields = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **args}
        try:
            model = hf.model_from_config(name, hf_task(recipe), **fields)
        except (ValueError, TypeError, KeyError) as error:
            raise RecipeError(f"{where}.model {spec.model}: {error}") from None
    elif kind == "hf":
        dtype = args.pop("dtype", None)
        gguf_file = args.pop("gguf_file", None)
        if args or (dtype is not None and dtype not in DTYPES):
            raise RecipeError(
                f"{where}.args: hf models take gguf_file and dtype ({', '.join(DTYPES)}); "
                f"got {spec.args}"
            )
        try:
            model, _ = hf.load_hf_lm(
                spec.model, task=hf_task(recipe), gguf_file=gguf_file, dtype=DTYPES.get(dtype)
            )
        except (OSError, ValueError, ImportError) as error:
            raise RecipeError(f"{where}.model {spec.model}: {error}") from None
    else:
        raise RecipeError(
            f"{where}.model {spec.model!r}: a language-model recipe takes hf:<id, dir or "
            f"{' | '.join(hf.LOCAL_MODELS)}>, hf-config:<model_type>"
            + (" or teacher" if where == "student" else "")
        )
    if spec.checkpoint is not None:
        if not spec.checkpoint.exists():
            raise RecipeError(f"{where}.checkpoint {spec.checkpoint} does not exist")
        ckpt.load_weights(model, spec.checkpoint)
    return model.float() if model.dtype == torch.float16 else model


def own_token_rows(rows: Dataset, tokenizer: Any, teacher_tokenizer: Any) -> list[dict]:
    """Packed rows (``input_ids``, ``labels``: the next tokens) written again in a teacher's
    own tokens: each row's text (its tokens and last label, token by token) cut by
    ``teacher_tokenizer``, all rows cut to the shortest, so a teacher with another tokenizer
    is measured on the same text."""
    texts = token_texts(tokenizer)
    encoded = []
    for row in rows:
        tokens = [*row["input_ids"].tolist(), int(row["labels"][-1])]
        text = "".join(texts.get(token, "") for token in tokens)
        encoded.append(teacher_tokenizer(text, add_special_tokens=False)["input_ids"])
    length = min(len(ids) for ids in encoded)
    out = []
    for ids in encoded:
        block = torch.tensor(ids[:length])
        labels = block[1:]
        out.append(
            {
                "input_ids": block[:-1],
                "labels": labels,
                "loss_mask": torch.ones_like(labels, dtype=torch.bool),
            }
        )
    return out


def is_served(recipe: Recipe) -> bool:
    """Whether the recipe's teacher runs on an inference server (``served:<url>``)."""
    return recipe.teacher is not None and recipe.teacher.kind is TeacherKind.SERVED


def served_teacher(recipe: Recipe, tokenizer: Any, log: Callable[[str], None]) -> Served:
    """The recipe's served teacher, checked once (its model, tokenizer and top-k) before
    anything trains; its top-k is ``cache.top_k`` when the recipe caches it."""
    assert recipe.teacher is not None
    args = dict(recipe.teacher.args)
    asked = args.pop("top_k", 20)
    top_k = recipe.cache.top_k if recipe.cache is not None else asked  # the same, if both set
    teacher = Served(
        served_url(recipe.teacher.model),
        tokenizer=tokenizer,
        top_k=top_k,
        api_key=served_api_key(args.pop("api_key_env", None)),
        **args,
    )
    info = teacher.check()
    checked = (
        "same tokenizer as the student"
        if info["tokenizer_checked"]
        else ("tokenizer not compared (the server has no /tokenize)")
    )
    log(f"teacher {teacher.model} served at {teacher.url}: top {top_k} log-probs, {checked}")
    return teacher


def served_members(recipe: Recipe) -> bool:
    """Whether the recipe's teacher routes rows to members on inference servers."""
    members = recipe.teacher.members if recipe.teacher is not None else None
    return bool(members) and all(m.kind is TeacherKind.SERVED for m in members)  # type: ignore[union-attr]


def routed_served(
    recipe: Recipe, tokenizer: Any, log: Callable[[str], None]
) -> tuple[RoutedServed, dict[str, Any]]:
    """The routed teacher whose members are served: each checked once (model, tokenizer,
    top-k), each asked only about the rows routed to it."""
    spec = recipe.teacher
    assert spec is not None and spec.members is not None
    members = {}
    for index, member in enumerate(spec.members):
        log(f"teacher.members[{index}]: {member.model}")
        alone = recipe.model_copy(update={"teacher": member})
        members[member.domain or str(index)] = served_teacher(alone, tokenizer, log)
    infos = [{"model": m.model, "train_seconds": 0.0} for m in spec.members]
    return RoutedServed(members), {"model": "ensemble", "train_seconds": 0.0, "members": infos}


def served_api_key(variable: str | None) -> str | None:
    """The served teacher's API key, read from the environment variable the recipe names
    (``teacher.args.api_key_env``); the key itself is never in the recipe or the run."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise RecipeError(
            f"teacher.args.api_key_env: the environment variable {variable} is not set; "
            f"export {variable}=<the server's API key> before the run"
        )
    return key


def text_spec(recipe: Recipe) -> TextDataSpec:
    assert isinstance(recipe.data, TextDataSpec)
    return recipe.data


def tokenizer_source(recipe: Recipe) -> tuple[str, str | None, ModelSpec | None]:
    """(hf:<id or dir>, gguf file, the model it belongs to or None for ``data.tokenizer``)
    of the recipe's tokenizer: ``data.tokenizer``, else the teacher's (or an ``hf:``
    student's)."""
    spec = text_spec(recipe)
    if spec.tokenizer is not None:
        return spec.tokenizer, None, None
    for owner in (recipe.teacher, recipe.student):
        if owner is not None and owner.model.startswith("hf:"):
            return owner.model, owner.args.get("gguf_file"), owner
    raise RecipeError(
        "data.tokenizer: no hf: teacher or student to take a tokenizer from; set "
        "data.tokenizer to hf:<id or dir>"
    )


def tokenizer_for(recipe: Recipe) -> Any:
    """The recipe's tokenizer (``tokenizer_source``), loaded; pad and end tokens set."""
    source, gguf, owner = tokenizer_source(recipe)
    try:
        tokenizer = hf.load_tokenizer(source, gguf)
    except (OSError, ValueError, ImportError) as error:
        field = "data.tokenizer" if owner is None else "the tokenizer of " + owner.model
        raise RecipeError(f"{field}: cannot load a tokenizer ({error})") from None
    if tokenizer.eos_token_id is None and tokenizer.sep_token_id is not None:
        tokenizer.eos_token = tokenizer.sep_token  # WordPiece: [SEP] ends a document
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_teacher(recipe: Recipe, tokenizer: Any) -> nn.Module:
    """The recipe's teacher model, built from the recipe's seed: a head the checkpoint
    lacks (a sentence encoder's masked-LM head) starts the same in every run."""
    assert recipe.teacher is not None
    torch.manual_seed(recipe.seed)
    return build_lm(recipe.teacher, recipe, tokenizer, where="teacher")


def domain_reader(recipe: Recipe) -> Callable[[dict[str, Any]], int] | None:
    """With ``teacher.combine: route``, a record's member: the index of the member whose
    ``domain`` its ``data.domain_column`` field names, else the first of
    ``data.domain_rules`` that matches its prompt, else ``data.default_domain``."""
    spec, teacher = text_spec(recipe), recipe.teacher
    if teacher is None or teacher.combine != "route":
        return None
    names = [member.domain for member in teacher.members or []]
    column, default = spec.domain_column, spec.default_domain
    rules = [(domain, re.compile(pattern)) for domain, pattern in spec.domain_rules.items()]

    def member_of(record: dict[str, Any]) -> int:
        named = record.get(column) if column else None
        if named not in names:
            prompt = prompt_text(record) if rules else ""
            named = next((domain for domain, rule in rules if rule.search(prompt)), default)
        if named is None:
            raise RecipeError(
                f"data.domain_column: a row's {column!r} is {record.get(column or '')!r} and no "
                f"data.domain_rules matches its prompt, so no teacher.members[*].domain "
                f"({names}) teaches it; set data.default_domain or fix the row"
            )
        return names.index(named)

    return member_of
