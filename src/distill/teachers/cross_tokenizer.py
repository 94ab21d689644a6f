"""A language-model teacher with its own tokenizer: it reads the student's text, not its
token ids, and hands back its logits with the ``Alignment`` of its tokens to the student's
(for ``losses.cross_tokenizer_kd``)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from distill.batch import Batch
from distill.losses.cross_tokenizer import Alignment, Group
from distill.methods.cross_tokenizer import align_spans, shared_vocabulary, token_texts
from distill.outputs import IGNORE_INDEX, TeacherOutput
from distill.teachers.base import Teacher
from distill.teachers.module import Module


class CrossTokenizer(Teacher):
    """``model`` (a causal LM on ``teacher_tokenizer``'s tokens) teaching a student on
    ``student_tokenizer``'s. Per batch row it writes the student's tokens (the inputs and
    the last label) as text, token by token (``methods.cross_tokenizer.token_texts``), so
    each student token's character span is exact; the teacher's tokenizer cuts the same
    text (its offsets), the two are aligned (``align_spans``) and the teacher runs on its
    own tokens. Groups that predict a token the labels leave out (-100: a prompt,
    padding) are dropped."""

    def __init__(
        self,
        model: nn.Module,
        student_tokenizer: Any,
        teacher_tokenizer: Any,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.inner = Module(model, autocast_dtype=autocast_dtype)
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.vocabulary = shared_vocabulary(student_tokenizer, teacher_tokenizer)
        self.texts = token_texts(student_tokenizer)

    def to(self, device: torch.device | str) -> CrossTokenizer:
        self.inner.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def _row(self, input_ids: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, list[Group]]:
        """(student tokens, teacher tokens, groups) of one row."""
        keep = labels != IGNORE_INDEX
        last = labels[keep.nonzero().max()] if keep.any() else input_ids[:0]
        student = torch.cat([input_ids, last.reshape(-1)]).cpu()
        pieces = [self.texts.get(int(token), "") for token in student]
        ends = list(itertools.accumulate(len(piece) for piece in pieces))
        spans = list(zip([0, *ends[:-1]], ends, strict=True))
        text = "".join(pieces)
        teacher = self.teacher_tokenizer(
            text, return_offsets_mapping=True, add_special_tokens=False
        )
        teacher_tokens = torch.tensor(teacher["input_ids"] or [0], dtype=torch.long)
        groups = align_spans(spans, teacher["offset_mapping"], text)
        predicted = keep.cpu()  # token k is predicted by row k - 1: kept when its label is
        groups = [
            g
            for g in groups
            if all(0 < k <= len(predicted) and predicted[k - 1] for k in g.student)
        ]
        return student, teacher_tokens, groups

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        input_ids, labels = batch.kwargs["input_ids"], batch.labels
        if labels is None:
            raise ValueError("a cross-tokenizer teacher needs the batch's labels (next tokens)")
        rows = [self._row(input_ids[r], labels[r]) for r in range(len(input_ids))]
        longest = max(len(teacher) for _, teacher, _ in rows)
        pad = self.teacher_tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (_, teacher, _) in enumerate(rows):
            ids[r, : len(teacher)], mask[r, : len(teacher)] = teacher, 1
        own = Batch(args=(), kwargs={"input_ids": ids, "attention_mask": mask}).to(self.device)
        output = self.inner(own, logits=True)
        alignment = Alignment(
            groups=[groups for _, _, groups in rows],
            student_tokens=[student for student, _, _ in rows],
            teacher_tokens=[teacher for _, teacher, _ in rows],
            vocabulary=self.vocabulary,
        )
        return TeacherOutput(logits=output.logits, alignment=alignment)
