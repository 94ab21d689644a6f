"""On-policy distillation: the student writes the answers the teacher then grades.

GKD (Agarwal et al., "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", ICLR 2024): with probability λ a batch's answers are replaced by
the student's own samples for the same prompts; the objective's token-level divergence
(forward KL, reverse KL, generalized JSD, …) is then computed token by token on those
samples, where the teacher says what it would have written instead. λ = 0 is ordinary
(off-policy, supervised) KD on the dataset's answers; λ = 1 is fully on-policy, which
removes the train/inference mismatch of a student that never sees its own mistakes.

``OnPolicy`` is a ``Distiller(batch_transform=...)``: it rewrites chat rows (the
``ChatExamples`` convention: labels are the next tokens, -100 on the prompt and padding)
before the teacher and the student see them. Whether a micro-batch is rewritten is drawn
from a generator seeded by (seed, step, micro-batch count), so a resumed run makes the
same choices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.batch import IGNORE_INDEX, Batch


class OnPolicy:
    """With probability ``lam`` per micro-batch, the student answers the prompts itself."""

    def __init__(
        self,
        student: nn.Module,
        *,
        lam: float = 0.5,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        pad_token_id: int,
        eos_token_id: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"on_policy.lam must be in [0, 1], got {lam}")
        if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("on_policy: max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1")
        if not hasattr(student, "generate"):
            raise TypeError("on-policy distillation needs a student with .generate (a HF LM)")
        self.student, self.lam = student, lam
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.pad_token_id, self.eos_token_id, self.seed = pad_token_id, eos_token_id, seed
        self.last_on_policy = False
        self.generated_batches = self.generated_tokens = 0
        self._step, self._micro = -1, 0

    def _draw(self, step: int) -> bool:
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        generator = torch.Generator().manual_seed(hash((self.seed, step, self._micro)) % 2**63)
        return bool(torch.rand((), generator=generator) < self.lam)

    def __call__(self, batch: Batch, step: int) -> Batch:
        self.last_on_policy = self.lam > 0 and self._draw(step)
        if not self.last_on_policy:
            return batch
        return self.rewrite(batch)

    @torch.no_grad()
    def rewrite(self, batch: Batch) -> Batch:
        """The same prompts, answered by the student (sampled), in the row convention."""
        ids, labels = batch.kwargs.get("input_ids"), batch.labels
        if ids is None or labels is None:
            raise ValueError("on-policy rows need input_ids and labels (chat rows)")
        length = ids.shape[1]
        labelled = labels != IGNORE_INDEX
        has_answer = labelled.any(1)
        prompt_lengths = torch.where(has_answer, labelled.float().argmax(1) + 1, 0)
        todo = has_answer.nonzero().squeeze(1).tolist()
        if not todo:
            return batch
        width = int(prompt_lengths.max())
        prompts = torch.full(
            (len(todo), width), self.pad_token_id, dtype=ids.dtype, device=ids.device
        )
        attention = torch.zeros_like(prompts)
        for k, row in enumerate(todo):  # left-padded for generation
            n = int(prompt_lengths[row])
            prompts[k, width - n :], attention[k, width - n :] = ids[row, :n], 1
        was_training = self.student.training
        self.student.eval()
        sampling = self.temperature > 0
        options = {"do_sample": sampling}
        if sampling:
            options.update(temperature=self.temperature, top_p=self.top_p)
        try:
            output = self.student.generate(
                input_ids=prompts,
                attention_mask=attention,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
                **options,
            )
        finally:
            self.student.train(was_training)
        answers = output[:, width:]
        new_ids, new_labels = ids.clone(), labels.clone()
        new_attention = torch.zeros_like(ids)
        if "attention_mask" in batch.kwargs:
            new_attention = batch.kwargs["attention_mask"].clone()
        for k, row in enumerate(todo):
            n = int(prompt_lengths[row])
            answer = _until_eos(answers[k], self.eos_token_id, self.pad_token_id)
            sequence = torch.cat([ids[row, :n], answer])[: length + 1]
            inputs, targets = sequence[:-1], sequence[1:]
            new_ids[row] = self.pad_token_id
            new_ids[row, : inputs.numel()] = inputs
            new_labels[row] = IGNORE_INDEX
            new_labels[row, n - 1 : targets.numel()] = targets[n - 1 :]
            new_attention[row] = 0
            new_attention[row, : inputs.numel()] = 1
            self.generated_tokens += int(answer.numel())
        self.generated_batches += 1
        kwargs = {**batch.kwargs, "input_ids": new_ids}
        if "attention_mask" in batch.kwargs:
            kwargs["attention_mask"] = new_attention
        return Batch(
            args=batch.args,
            kwargs=kwargs,
            labels=new_labels,
            mask=new_labels != IGNORE_INDEX,
            meta=batch.meta,
        )


def _until_eos(tokens: Tensor, eos: int | None, pad: int) -> Tensor:
    """The generated tokens up to and including the first eos (generate pads after it)."""
    if eos is not None:
        ends = (tokens == eos).nonzero()
        if ends.numel():
            return tokens[: int(ends[0]) + 1]
    if pad != eos:
        keep = tokens != pad
        if not keep.all():
            return tokens[: int((~keep).float().argmax())]
    return tokens
