"""A language-model run's rows: ``data.source`` read (or the teacher's generated answers),
tokenized into packed blocks, chat examples or masked blocks, and split into train /
validation / test by ``data.split_seed``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from distill.data.text import ChatExamples, MaskedBlocks, PackedText, text_records
from distill.errors import RecipeError
from distill.methods.generated_data import read_generations
from distill.recipes import Recipe
from distill.runs.task import Splits
from distill.runs.tasks.language.generate import generated_path
from distill.runs.tasks.language.models import domain_reader, text_spec


@dataclass
class TextData(Splits):
    """A language-model run's rows (the distilled and the label-only students train on the
    same ones) and the tokenizer that made them."""

    tokenizer: Any
    teacher_tokenizer: Any = None  # teacher.tokenizer: the teacher's own, not the student's
    test_by_domain: dict[str, Dataset] | None = None  # a routed teacher: test rows per member

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
        rows = ChatExamples(records, tokenizer, spec.seq_len, domain_reader(recipe))
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
    provenance, test_by_domain = {}, None
    trained, tested = member_rows(recipe, rows, train_ids), member_rows(recipe, rows, test.indices)
    if trained is not None and tested is not None:
        taught_by = {name: len(ids) for name, ids in trained.items()}
        provenance = {"teacher_rows": taught_by}  # which member taught how many rows
        test_by_domain = {name: Subset(rows, ids) for name, ids in tested.items()}
        regime += "; routed: " + ", ".join(f"{n} rows to {d}" for d, n in taught_by.items())
    return TextData(
        student_train=train,
        baseline_train=train,
        val=val,
        test=test,
        regime=regime,
        tokenizer=tokenizer,
        test_by_domain=test_by_domain,
        provenance=provenance,
    )


def member_rows(recipe: Recipe, rows: Dataset, ids: Sequence[int]) -> dict[str, list[int]] | None:
    """Which of the rows ``ids`` each member of a routed teacher answers, by its domain
    (None: not routed): the summary's provenance and the per-domain measures."""
    teacher = recipe.teacher
    if teacher is None or teacher.combine != "route" or not isinstance(rows, ChatExamples):
        return None
    names = [str(member.domain) for member in teacher.members or []]
    found: dict[str, list[int]] = {name: [] for name in names}
    for i in ids:
        found[names[int(rows.rows[i]["domain"])]].append(i)
    return found
