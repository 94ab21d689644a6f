"""What ``Distiller.evaluate`` reports: accuracy and cross-entropy on the labelled rows,
and, with a teacher, the KL divergence to it and how often the student's top class (next
token, for LMs) is the teacher's. Means over rows (examples, or tokens under a mask)."""

from __future__ import annotations

import torch
from torch import Tensor

from distill import losses
from distill.batch import Batch
from distill.outputs import IGNORE_INDEX, TeacherOutput


class EvaluationSums:
    """Running sums over the batches of one evaluation; ``result()`` gives the metrics."""

    def __init__(self, has_teacher: bool) -> None:
        self.has_teacher = has_teacher
        self.loss = self.correct = self.kl = self.agree = 0.0
        self.rows = self.labelled = self.compared = 0

    @torch.no_grad()
    def add(self, batch: Batch, student_logits: Tensor, teacher: TeacherOutput | None) -> None:
        rows = batch.rows()
        self.rows += rows
        counted = torch.ones(student_logits.shape[:-1], dtype=torch.bool)
        counted = counted.to(student_logits.device)
        if batch.mask is not None:
            counted &= batch.mask.bool()
        if batch.labels is not None:
            counted &= batch.labels != IGNORE_INDEX
        predicted = student_logits.argmax(-1)
        answer = self._teacher_answer(student_logits, batch, teacher)
        if answer is not None:
            kl, teacher_top = answer
            self.kl += float(kl) * rows
            self.agree += float(((predicted == teacher_top) & counted).sum())
            self.compared += int(counted.sum())
        if batch.labels is not None:
            ce = losses.cross_entropy(student_logits, batch.labels, mask=batch.mask)
            self.loss += float(ce) * rows
            self.correct += float(((predicted == batch.labels) & counted).sum())
            self.labelled += int(counted.sum())

    @staticmethod
    def _teacher_answer(
        student_logits: Tensor, batch: Batch, teacher: TeacherOutput | None
    ) -> tuple[Tensor, Tensor] | None:
        """KL(teacher ‖ student) at T = 1 and the teacher's top class, from its logits or,
        for a top-k cache, on the cache's k + 1 buckets at its temperature."""
        if teacher is None:
            return None
        if teacher.logits is not None:
            kl = losses.kl(student_logits, teacher.logits, mask=batch.mask)
            return kl, teacher.logits.argmax(-1)
        if teacher.topk is not None:
            topk = teacher.topk
            kl = losses.sparse_kl(
                student_logits, topk, temperature=topk.temperature, mask=batch.mask
            )
            return kl, topk.ids[..., 0]
        return None

    def result(self) -> dict[str, float]:
        metrics: dict[str, float] = {"examples": float(self.rows)}
        if self.labelled:
            metrics["accuracy"] = self.correct / self.labelled
            metrics["loss"] = self.loss / max(1, self.rows)
        if self.has_teacher:
            metrics["kl_to_teacher"] = self.kl / max(1, self.rows)
            metrics["teacher_agreement"] = self.agree / max(1, self.compared)
        return metrics
