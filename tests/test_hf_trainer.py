"""distill's objective inside a Hugging Face Trainer: one optimizer step over two
accumulated micro-batches updates the student exactly as distill's engine does on the
same rows, with a term over every token beside one over the labelled tokens only."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch.utils.data import DataLoader, default_collate

import distill
from distill import Objective, Term, losses, teachers
from distill.integrations.transformers import (
    DistillationMixin,
    DistillationTrainer,
    as_distill_batch,
)
from distill.methods import token_kd_term
from distill.outputs import IGNORE_INDEX

from .text_models import PAD, VOCAB, tiny_llama

ROWS, LENGTH = 8, 10


def hf_rows() -> list[dict[str, torch.Tensor]]:
    """Hugging Face rows (labels = the tokens, the model shifts them): a 3-token prompt
    without labels, and padding at the end of the last three rows."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(ROWS):
        ids = torch.randint(6, VOCAB, (LENGTH,), generator=g)
        attention = torch.ones(LENGTH, dtype=torch.long)
        if i >= 5:
            ids[-3:], attention[-3:] = PAD, 0
        labels = ids.clone()
        labels[:3] = IGNORE_INDEX
        labels[attention == 0] = IGNORE_INDEX
        rows.append({"input_ids": ids, "attention_mask": attention, "labels": labels,
                     "loss_mask": attention.bool()})  # fmt: skip
    return rows


def objective(kind: str, student, teacher) -> Objective:
    """kd reads every real token (the loss_mask); ce only the labelled ones. ``lm_head``:
    the chunked LM-head KD (``token_kd_term``), which reads hidden states, not logits."""
    kd = (
        token_kd_term(student, teacher, temperature=2.0)
        if kind == "lm_head"
        else Term(losses.kl, temperature=2.0)
    )
    return Objective(kd=kd, ce=Term(losses.cross_entropy, weight=0.5, rows="labelled"))


# one SGD step of lr 1 over 2 accumulated micro-batches of 4, nothing else moving the weights
ONE_SGD_STEP = dict(
    per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1, learning_rate=1.0,
    optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
    use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", seed=0,
)  # fmt: skip


def distill_rows(hf_batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A Hugging Face batch as the engine's rows: labels shifted, the loss mask and any
    metadata (``example_id``) kept, one dict per row."""
    batch = as_distill_batch(hf_batch, shift_labels=True)
    columns = {**batch.kwargs, "labels": batch.labels, "loss_mask": batch.mask, **batch.meta}
    return [{k: v[i] for k, v in columns.items()} for i in range(len(batch.labels))]


def engine_step(student, teacher, objective: Objective, rows: list[dict]) -> None:
    """distill's engine: the same SGD step on all the rows as one batch."""
    distill.Distiller(
        student, teacher, objective, optimizer="sgd", momentum=0.0, lr=1.0,
        lr_schedule="constant", progress=False, select_metric=None, cpu=True,
    ).fit(DataLoader(rows, batch_size=len(rows)), max_steps=1)  # fmt: skip


def assert_same_weights(student, by_engine) -> float:
    """The two students' weights agree; how far the step moved the student from its start."""
    initial = tiny_llama(seed=0).state_dict()
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, by_engine.state_dict()[name], atol=1e-6, rtol=1e-5)
    return max(float((v - initial[k]).abs().max()) for k, v in student.state_dict().items())


def make_teacher(kind: str) -> tuple[torch.nn.Module, object]:
    """The teacher model, and what the Trainer and the engine are handed: the module itself
    (``module``), or a distill Teacher, the mean of two Llamas at T = 2 (``ensemble``)."""
    model = tiny_llama(seed=1).eval()
    if kind == "module":
        return model, model
    pair = {"a": model, "b": tiny_llama(seed=2).eval()}
    return model, teachers.Ensemble(pair, "mean", temperature=2.0)


@pytest.mark.parametrize(
    ("kind", "teacher_kind"), [("logits", "module"), ("lm_head", "module"), ("logits", "ensemble")]
)
def test_one_trainer_step_with_accumulation_equals_distills_engine_step(
    tmp_path, kind, teacher_kind
):
    teacher, handed = make_teacher(teacher_kind)
    student = tiny_llama(seed=0)
    by_engine = copy.deepcopy(student)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), remove_unused_columns=False, **ONE_SGD_STEP
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=hf_rows(), teacher=handed,
        objective=objective(kind, student, teacher),
    )  # fmt: skip
    trainer.train()

    # the engine, on the same rows in distill's convention, as one batch of 8
    engine_teacher = handed if isinstance(handed, teachers.Teacher) else teachers.Module(teacher)
    rows = distill_rows(default_collate(hf_rows()))
    engine_step(by_engine, engine_teacher, objective(kind, by_engine, teacher), rows)
    moved = assert_same_weights(student, by_engine)
    assert moved > 1e-3  # the step did move the student


def test_hf_labels_are_shifted_to_distills_next_token_labels():
    row = hf_rows()[6]
    batch = as_distill_batch({k: v[None] for k, v in row.items()}, shift_labels=True)
    assert batch.labels[0, :-1].tolist() == row["labels"][1:].tolist()
    assert batch.labels[0, -1] == IGNORE_INDEX
    unmasked = {k: v[None] for k, v in row.items() if k != "loss_mask"}
    default = as_distill_batch(unmasked, shift_labels=True)
    assert torch.equal(default.mask, default.labels != IGNORE_INDEX)


def test_an_objective_with_learned_projectors_is_refused(tmp_path):
    teacher = tiny_llama(seed=1, hidden_size=48, num_attention_heads=4).eval()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, use_cpu=True,
        report_to=[], save_strategy="no", remove_unused_columns=False,
    )  # fmt: skip
    hint = Objective(
        hint=Term(losses.hint, student="model.layers.1", teacher="model.layers.1"),
    )
    trainer = DistillationTrainer(
        model=tiny_llama(seed=0), args=args, train_dataset=hf_rows(), teacher=teacher,
        objective=hint,
    )  # fmt: skip
    with pytest.raises(ValueError, match="learns projectors"):
        trainer.train()


def test_trls_sft_trainer_with_the_mixin_steps_as_distills_engine(tmp_path):
    """TRL's SFTTrainer, with distill's objective mixed in, on rows of 7 to 10 tokens that
    its collator pads: one step over 2 accumulated micro-batches equals the engine's."""
    trl = pytest.importorskip("trl")
    import datasets

    from .text_models import chat_tokenizer

    class KDTrainer(DistillationMixin, trl.SFTTrainer):
        pass

    teacher, student = tiny_llama(seed=1).eval(), tiny_llama(seed=0)
    by_engine = copy.deepcopy(student)
    rows = [{"input_ids": r["input_ids"][r["attention_mask"] == 1].tolist()} for r in hf_rows()]
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        bf16=False,
        **ONE_SGD_STEP,  # TRL turns bf16 on where it can
    )
    trainer = KDTrainer(
        model=student, args=args, train_dataset=datasets.Dataset.from_list(rows),
        processing_class=chat_tokenizer(), teacher=teacher,
        objective=objective("logits", student, teacher),
    )  # fmt: skip
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(ROWS)])
    assert (collated["attention_mask"] == 0).any()  # the collator padded
    trainer.train()

    engine_step(
        by_engine, teachers.Module(teacher), objective("logits", by_engine, teacher),
        distill_rows(collated),
    )  # fmt: skip
    assert_same_weights(student, by_engine)


def test_a_cached_teacher_inside_the_trainer_steps_as_distills_engine(tmp_path):
    """A top-8 teacher-output cache built once (rows carry their ``example_id``) teaches the
    student in the Trainer exactly as in distill's engine, with the sparse KL."""
    from distill.cache import Layout, build_cache

    teacher = tiny_llama(seed=1).eval()
    student = tiny_llama(seed=0)
    by_engine = copy.deepcopy(student)
    hf = [{**row, "example_id": torch.tensor(i)} for i, row in enumerate(hf_rows())]
    engine_rows = distill_rows(default_collate(hf))
    layout = Layout(kind="topk", num_examples=ROWS, shard_size=ROWS, k=8, vocab_size=VOCAB)
    build_cache(teachers.Module(teacher), engine_rows, tmp_path / "cache", layout, progress=False)

    def sparse_objective() -> Objective:
        return Objective(
            kd=Term(losses.sparse_kl, temperature=1.0),
            ce=Term(losses.cross_entropy, weight=0.5, rows="labelled"),
        )

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), remove_unused_columns=False, **ONE_SGD_STEP
    )
    DistillationTrainer(
        model=student, args=args, train_dataset=hf, objective=sparse_objective(),
        teacher=teachers.Cached(tmp_path / "cache"),
    ).train()  # fmt: skip
    engine_step(by_engine, teachers.Cached(tmp_path / "cache"), sparse_objective(), engine_rows)
    assert assert_same_weights(student, by_engine) > 1e-3
