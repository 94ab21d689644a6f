"""What ``Distiller.evaluate`` reports: accuracy and cross-entropy on the labelled rows,
and, with a teacher, the KL divergence to it and how often the student's top class (next
token, for LMs) is the teacher's. Means over rows (examples, or tokens under a mask).

For a sequence model with a teacher's full logits it also reports ``acceptance``, the
expected acceptance rate α of the student as a speculative-decoding draft for that teacher
(Leviathan et al. 2023): the mean over scored tokens of Σ_v min(p(v), q(v)) at
temperature 1, i.e. 1 − TVD; under greedy decoding a draft token is accepted when it is the
teacher's top token, which is ``teacher_agreement``.

Regression targets (floating-point labels, e.g. a diffusion model's v): ``loss`` is the
mean squared error per example (weighted by the batch's ``example_weight``), and with a
teacher ``teacher_target_loss`` (the mean squared error to its answer); no accuracy."""

from __future__ import annotations

import torch
from torch import Tensor

from distill import losses
from distill.batch import Batch
from distill.losses.cross_tokenizer import aligned_agreement
from distill.outputs import IGNORE_INDEX, TeacherOutput


class EvaluationSums:
    """Running sums over the batches of one evaluation; ``result()`` gives the metrics."""

    def __init__(self, has_teacher: bool) -> None:
        self.has_teacher = has_teacher
        self.loss = self.correct = self.kl = self.agree = self.overlap = 0.0
        self.rows = self.labelled = self.compared = self.kl_rows = self.overlapped = 0
        self.regression, self.mse_to_teacher = False, 0.0

    @torch.no_grad()
    def add(self, batch: Batch, student_logits: Tensor, teacher: TeacherOutput | None) -> None:
        if batch.labels is not None and batch.labels.is_floating_point():
            self._add_regression(batch, student_logits, teacher)
            return
        rows = batch.rows()
        self.rows += rows
        counted = torch.ones(student_logits.shape[:-1], dtype=torch.bool)
        counted = counted.to(student_logits.device)
        if batch.mask is not None:
            counted &= batch.mask.bool()
        if batch.labels is not None:
            counted &= batch.labels != IGNORE_INDEX
        predicted = student_logits.argmax(-1)
        if teacher is not None and teacher.alignment is not None:  # another tokenizer: no KL
            agree, compared = aligned_agreement(student_logits, teacher.logits, teacher.alignment)
            self.agree, self.compared = self.agree + agree, self.compared + compared
        elif (answer := self._teacher_answer(student_logits, batch, teacher)) is not None:
            kl, teacher_top = answer
            self.kl, self.kl_rows = self.kl + float(kl) * rows, self.kl_rows + rows
            self.agree += float(((predicted == teacher_top) & counted).sum())
            self.compared += int(counted.sum())
            if teacher is not None and teacher.logits is not None and student_logits.dim() == 3:
                overlap = distribution_overlap(student_logits, teacher.logits)
                self.overlap += float(overlap[counted].sum())
                self.overlapped += int(counted.sum())
        if batch.labels is not None:
            ce = losses.cross_entropy(student_logits, batch.labels, mask=batch.mask)
            self.loss += float(ce) * rows
            self.correct += float(((predicted == batch.labels) & counted).sum())
            self.labelled += int(counted.sum())

    def _add_regression(
        self, batch: Batch, prediction: Tensor, teacher: TeacherOutput | None
    ) -> None:
        assert batch.labels is not None
        weight, rows = batch.meta.get("example_weight"), prediction.shape[0]
        self.regression = True
        self.rows += rows
        self.loss += float(losses.denoising(prediction, batch.labels, weight)) * rows
        if teacher is not None and teacher.logits is not None:
            self.mse_to_teacher += float(losses.denoising(prediction, teacher.logits)) * rows

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
        if self.regression:
            metrics["loss"] = self.loss / max(1, self.rows)
            if self.has_teacher:
                metrics["teacher_target_loss"] = self.mse_to_teacher / max(1, self.rows)
            return metrics
        if self.labelled:
            metrics["accuracy"] = self.correct / self.labelled
            metrics["loss"] = self.loss / max(1, self.rows)
        if self.has_teacher:
            if self.kl_rows or not self.compared:
                metrics["kl_to_teacher"] = self.kl / max(1, self.kl_rows)
            metrics["teacher_agreement"] = self.agree / max(1, self.compared)
            if self.overlapped:
                metrics["acceptance"] = self.overlap / self.overlapped
        return metrics


def distribution_overlap(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Σ_v min(p(v), q(v)) per position at temperature 1 (1 − total variation), over the
    vocabulary both heads have (a padded head's extra rows dropped)."""
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    q = torch.softmax(student_logits[..., :vocab].float(), dim=-1)
    p = torch.softmax(teacher_logits[..., :vocab].float(), dim=-1)
    return torch.minimum(p, q).sum(-1)
