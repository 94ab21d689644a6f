"""distill's objective inside a Hugging Face ``Trainer`` (or TRL's ``SFTTrainer``, which
subclasses it): keep your training script, add a teacher and distill's terms.

    from distill.integrations.transformers import DistillationTrainer

    trainer = DistillationTrainer(
        model=student, args=TrainingArguments(...), train_dataset=rows,
        teacher=teacher,                                  # an nn.Module or a distill Teacher
        objective=Objective(kd=token_kd_term(student, teacher, temperature=1.0),
                            ce=Term(losses.cross_entropy, weight=0.5)),
    )
    trainer.train()

For TRL, mix the class in: ``class Trainer(DistillationMixin, SFTTrainer)``. Rows hold
``input_ids``, ``attention_mask`` and ``labels`` in the Hugging Face convention (the model
shifts them; ``shift_labels=False`` for distill's own rows, whose labels are shifted
already) and optionally a ``loss_mask`` (which positions the distillation terms read;
default: those with a label). Keep ``TrainingArguments(remove_unused_columns=False)``
when rows carry a ``loss_mask``.

``compute_loss`` runs the teacher (live, cached: ``teachers.Cached``, or an ensemble:
``teachers.Ensemble``) and the student on the batch and returns the objective, each
micro-batch weighed by its share of the rows each term averages over in the whole
accumulation window (and over processes), as distill's own engine does: one optimizer
step over ``gradient_accumulation_steps`` micro-batches is the step of one large batch.
(The Trainer's own ``num_items_in_batch`` counts label tokens only; a KD term averages over
every token under the mask, so the window's rows are counted here per kind of term.)
Terms with learned projectors (a FitNets hint between different widths) are not
supported here: their weights would be outside the Trainer's optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from distill import teachers
from distill.batch import Batch, as_batch, logits_of
from distill.objective import Objective, default_objective, loss_inputs
from distill.outputs import IGNORE_INDEX
from distill.taps import Taps
from distill.teachers import Teacher
from distill.training.step_logs import micro_batch_part, micro_batch_shares


def as_distill_batch(inputs: dict[str, Any], shift_labels: bool) -> Batch:
    """A Trainer batch as distill's terms read it. With ``shift_labels`` (the Hugging Face
    convention: ``labels[t]`` is token t, the model shifts) ``labels[t]`` becomes the label
    of the next token, as distill's rows hold it, and, unless the batch has a
    ``loss_mask``, the terms read the positions that have a label."""
    raw = dict(inputs)
    labels = raw.get("labels")
    if shift_labels and labels is not None and labels.dim() == 2:
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        raw["labels"] = shifted
        raw.setdefault("loss_mask", shifted != IGNORE_INDEX)
    return as_batch(raw)


class DistillationMixin:
    """``compute_loss`` from a distill ``Objective`` for any ``transformers.Trainer``."""

    def __init__(
        self,
        *args: Any,
        teacher: Teacher | nn.Module | None = None,
        objective: Objective | None = None,
        shift_labels: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.shift_labels = shift_labels
        if teacher is not None and not isinstance(teacher, Teacher):
            teacher = teachers.Module(teacher)
        self.teacher = teacher
        self.objective = objective or default_objective(teacher)
        self.objective.check_teacher(teacher)
        self.student_taps = Taps(self.model, self.objective.student_taps)
        device = self.args.device
        if teacher is not None:
            teacher.add_taps(self.objective.teacher_taps)
            teacher.to(device)
        self.objective.to(device)
        self.loss_is_scaled_for_ga = True  # compute_loss weighs each micro-batch itself
        self._shares: list[dict[bool, Any]] = []
        self._built = False

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """The window's micro-batches, as the Trainer reads them; and here, each one's
        share of the window's rows for every kind of row the terms average over."""
        samples, items = super().get_batch_samples(epoch_iterator, num_batches, device)  # type: ignore[misc]
        world = self.accelerator.num_processes
        reduce = (lambda t: self.accelerator.reduce(t, reduction="sum")) if world > 1 else None
        batches = [as_distill_batch(s, self.shift_labels).to(device) for s in samples]
        self._shares = micro_batch_shares(
            batches, self.objective.labelled_rows, device, reduce, world
        )
        return samples, items

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        batch = as_distill_batch(inputs, self.shift_labels)
        objective = self.objective
        teacher_out = None
        if self.teacher is not None and objective.reads_teacher:
            with torch.no_grad():
                teacher_out = self.teacher(batch, logits=objective.reads("teacher_logits"))
        full_logits = not model.training or objective.reads("student_logits")
        output = batch.run(model, logits=full_logits)
        values = loss_inputs(batch, logits_of(output), teacher_out, self.student_taps.pop())
        if not self._built:
            objective.build(values)
            self._built = True
            if len(objective.projectors):
                raise ValueError(
                    "DistillationTrainer: this objective learns projectors, which the "
                    "Trainer's optimizer would not train; use distill.Distiller for it"
                )
        value = objective(values, self.state.global_step, max(1, self.state.max_steps))
        if model.training and self._shares:
            loss, _ = micro_batch_part(value, objective.labelled_rows, self._shares.pop(0))
        else:  # evaluation: this batch's mean
            loss = value.total
        return (loss, output) if return_outputs else loss


class DistillationTrainer(DistillationMixin, transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is a distill ``Objective`` (see the module)."""
