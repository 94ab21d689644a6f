"""On-policy distillation (GKD): the student answers the prompts of chat rows, on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from distill import Distiller, Objective, teachers
from distill.batch import Batch, as_batch
from distill.data.text import ChatExamples
from distill.methods.on_policy import OnPolicy
from distill.methods.token_kd import token_kd_term
from distill.outputs import IGNORE_INDEX
from distill.training import Callback
from tests import text_models
from tests.text_models import EOS, PAD, chat_tokenizer

SEQ_LEN = 20
CHATS = [
    ("what did the cat do", "it sat on the mat"),
    ("a dog", "yes"),
    ("what is the answer the dog ran far", "no"),
    ("yes", "the cat sat"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def rows(tokenizer):
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]
    return ChatExamples(records, tokenizer, seq_len=SEQ_LEN)


@pytest.fixture
def batch(rows):
    return as_batch(default_collate([rows[i] for i in range(len(rows))]))


def tiny_llama(seed=0):
    # sharp random logits: samples are not all one token
    return text_models.tiny_llama(seed, pad_token_id=PAD, eos_token_id=EOS, initializer_range=0.5)


def on_policy(student, **kwargs):
    return OnPolicy(student, pad_token_id=PAD, eos_token_id=EOS, **kwargs)


def first_label(labels):
    """j0 of each row: its first labelled position (the last prompt position)."""
    return (labels != IGNORE_INDEX).int().argmax(1)


def check_rows(new: Batch, old: Batch, max_new_tokens: int, eos: int = EOS) -> None:
    """Every row of ``new`` is ``old``'s prompt, then an answer labelled as the next tokens."""
    ids, labels = new.kwargs["input_ids"], new.labels
    attention = new.kwargs["attention_mask"]
    old_ids = old.kwargs["input_ids"]
    length = ids.shape[1]
    assert ids.shape == labels.shape == attention.shape == old_ids.shape
    assert ids.dtype == old_ids.dtype and labels.dtype == old.labels.dtype
    assert torch.equal(new.mask, labels != IGNORE_INDEX)
    starts = first_label(old.labels)
    for row in range(ids.shape[0]):
        j0 = int(starts[row])
        assert torch.equal(ids[row, : j0 + 1], old_ids[row, : j0 + 1])  # the prompt
        labelled = (labels[row] != IGNORE_INDEX).nonzero().squeeze(1).tolist()
        # labels: -100 exactly on the prompt and the padding; one run starting at j0
        assert labelled == list(range(j0, j0 + len(labelled))) and labelled
        end = labelled[-1]
        assert bool(attention[row, : min(end + 2, length)].all())
        assert not bool(attention[row, end + 2 :].any())
        assert (ids[row, end + 2 :] == PAD).all()
        for j in labelled:
            if j + 1 < length:
                assert int(labels[row, j]) == int(ids[row, j + 1])  # next-token labels
        answer = labels[row, labelled].tolist()
        if eos in answer:
            assert answer.index(eos) == len(answer) - 1  # nothing labelled after the eos
        else:  # no end token: the answer ran to max_new_tokens or to the row's end
            assert len(answer) == min(max_new_tokens, length - j0)


class Scripted(nn.Module):
    """A 'student' whose generate returns fixed answers, to test where answers stop."""

    def __init__(self, answers):
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.answers = torch.tensor(answers)
        self.calls = []

    def generate(self, input_ids, attention_mask, **options):
        self.calls.append((input_ids.clone(), attention_mask.clone(), options))
        answers = self.answers[: input_ids.shape[0], : options["max_new_tokens"]]
        return torch.cat([input_ids, answers], 1)


# -- the mixture ----------------------------------------------------------------------------


def test_lambda_zero_returns_the_very_same_batch(batch):
    rewrite = on_policy(tiny_llama(), lam=0.0)
    for step in range(100):
        for _ in range(2):  # two micro-batches per step
            assert rewrite(batch, step) is batch
            assert not rewrite.last_on_policy
    assert rewrite.generated_batches == rewrite.generated_tokens == 0


def test_choices_are_a_function_of_seed_and_step_and_follow_lambda(batch):
    student = Scripted([[EOS]] * 4)  # answers at once: the test is about the choices
    first = on_policy(student, lam=0.3, max_new_tokens=1, seed=7)
    choices = []
    for step in range(200):
        first(batch, step)
        choices.append(first.last_on_policy)
    assert 0.2 < sum(choices) / 200 < 0.4
    assert first.generated_batches == sum(choices)
    # a resumed run (a new object) makes the same choices from any step on
    resumed = on_policy(student, lam=0.3, max_new_tokens=1, seed=7)
    for step in range(120, 200):
        resumed(batch, step)
        assert resumed.last_on_policy == choices[step]
    other = on_policy(student, lam=0.3, max_new_tokens=1, seed=8)
    assert [other._draw(step) for step in range(200)] != choices
    # micro-batches of one step draw independently: not all equal to the first of the step
    micro = on_policy(student, lam=0.5, seed=7)
    windows = [[micro._draw(step) for _ in range(4)] for step in range(50)]
    assert any(len(set(window)) > 1 for window in windows)
    again = on_policy(student, lam=0.5, seed=7)
    assert windows == [[again._draw(step) for _ in range(4)] for step in range(50)]


def test_samples_are_reproducible_and_leave_the_callers_rng_alone(batch):
    student = tiny_llama()
    state = torch.get_rng_state()
    one = on_policy(student, lam=1.0, max_new_tokens=8)(batch, step=3)
    assert torch.equal(torch.get_rng_state(), state)
    two = on_policy(student, lam=1.0, max_new_tokens=8)(batch, step=3)
    assert torch.equal(one.kwargs["input_ids"], two.kwargs["input_ids"])
    assert torch.equal(one.labels, two.labels)
    later = on_policy(student, lam=1.0, max_new_tokens=8)(batch, step=4)
    assert not torch.equal(one.kwargs["input_ids"], later.kwargs["input_ids"])


# -- the rewritten rows -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temperature", "top_p", "max_new_tokens"), [(1.0, 1.0, 6), (0.7, 0.9, 12), (0.0, 1.0, 3)]
)
def test_lambda_one_rewrites_every_row_in_the_row_convention(
    batch, temperature, top_p, max_new_tokens
):
    student = tiny_llama()
    rewrite = on_policy(
        student, lam=1.0, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    )
    for step in range(2):
        new = rewrite(batch, step)
        assert rewrite.last_on_policy and new is not batch
        check_rows(new, batch, max_new_tokens)
        assert torch.equal(new.meta["example_id"], batch.meta["example_id"])
        assert set(new.kwargs) == {"input_ids", "attention_mask"}
        assert not torch.equal(new.labels, batch.labels)  # the answers are the student's
    assert rewrite.generated_batches == 2
    assert rewrite.generated_tokens > 0


def test_answers_stop_at_the_first_end_token_which_is_labelled(batch):
    w = [10, 11, 12, 13, 14, 15, 16, 17]
    answers = [
        [w[0], EOS, w[1], w[2], w[3], w[4], w[5], w[6]],  # eos, then junk: not labelled
        [w[0], PAD, w[1], EOS, PAD, PAD, PAD, PAD],  # the pad id inside an answer is a token
        [EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD],  # an empty answer: the eos alone
        [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]],  # no end: runs to max_new_tokens
    ]
    student = Scripted(answers)
    new = on_policy(student, lam=1.0, max_new_tokens=8)(batch, 0)
    check_rows(new, batch, max_new_tokens=8)
    starts = first_label(batch.labels)
    expected = [[w[0], EOS], [w[0], PAD, w[1], EOS], [EOS], answers[3]]
    for row, answer in enumerate(expected):
        j0 = int(starts[row])
        assert new.labels[row, j0 : j0 + len(answer)].tolist() == answer
        assert (new.labels[row, j0 + len(answer) :] == IGNORE_INDEX).all()
    # prompts reach generate left-padded, with their attention mask
    prompts, attention, options = student.calls[0]
    lengths = (starts + 1).tolist()
    for row, n in enumerate(lengths):
        assert prompts[row, -n:].tolist() == batch.kwargs["input_ids"][row, :n].tolist()
        assert attention[row].tolist() == [0] * (prompts.shape[1] - n) + [1] * n
    assert options["do_sample"] and options["top_k"] == 0 and options["eos_token_id"] == [EOS]
    assert options["pad_token_id"] == PAD
    assert options["max_new_tokens"] == 8


def test_answers_are_cut_at_the_rows_length(batch):
    """An answer longer than the row keeps its token at T as the last label (as ChatExamples)."""
    student = tiny_llama()
    student.generation_config.eos_token_id = None  # no end token at all: answers fill rows
    rewrite = OnPolicy(student, lam=1.0, max_new_tokens=100, pad_token_id=PAD, seed=3)
    out = rewrite(batch, 0)
    check_rows(out, batch, max_new_tokens=100, eos=-1)
    starts = first_label(batch.labels)
    for row in range(out.labels.shape[0]):
        assert int((out.labels[row] != IGNORE_INDEX).sum()) == SEQ_LEN - int(starts[row])
        assert bool(out.kwargs["attention_mask"][row].all())


def test_rows_without_an_answer_are_kept_and_position_kwargs_dropped(batch):
    labels = batch.labels.clone()
    labels[1] = IGNORE_INDEX
    mask = labels != IGNORE_INDEX
    positions = torch.arange(SEQ_LEN).expand(labels.shape[0], -1)
    old = Batch(
        args=(),
        kwargs={**batch.kwargs, "position_ids": positions, "logits_to_keep": 0},
        labels=labels,
        mask=mask,
        meta=batch.meta,
    )
    rewrite = on_policy(tiny_llama(), lam=1.0, max_new_tokens=4)
    new = rewrite(old, 0)
    assert "position_ids" not in new.kwargs and new.kwargs["logits_to_keep"] == 0
    for name in ("input_ids", "attention_mask"):
        assert torch.equal(new.kwargs[name][1], old.kwargs[name][1])
    assert (new.labels[1] == IGNORE_INDEX).all() and not new.mask[1].any()
    keep = [0, 2, 3]
    check_rows(new.select(torch.tensor(keep)), old.select(torch.tensor(keep)), max_new_tokens=4)
    # a batch with no answer at all is not rewritten
    empty = Batch(args=(), kwargs=dict(batch.kwargs), labels=torch.full_like(labels, -100))
    assert rewrite(empty, 1) is empty and not rewrite.last_on_policy
    assert rewrite.generated_batches == 1


def test_the_students_modes_are_restored(batch):
    student = tiny_llama().train()
    student.model.layers[0].eval()  # a frozen part stays in eval mode
    modes = {name: m.training for name, m in student.named_modules()}
    seen = []
    generate = student.generate

    def spy(*args, **kwargs):
        seen.append(student.training)
        return generate(*args, **kwargs)

    student.generate = spy
    on_policy(student, lam=1.0, max_new_tokens=2)(batch, 0)
    assert seen == [False]  # sampled in eval mode (no dropout)
    assert modes == {name: m.training for name, m in student.named_modules()}
    student.eval()
    on_policy(student, lam=1.0, max_new_tokens=2)(batch, 0)
    assert not any(m.training for m in student.modules())


def test_a_wrapped_student_generates_through_the_wrapper(batch):
    class Wrapper(nn.Module):  # as DistributedDataParallel: the model is .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    new = on_policy(Wrapper(tiny_llama()), lam=1.0, max_new_tokens=3)(batch, 0)
    check_rows(new, batch, max_new_tokens=3)


def test_settings_are_checked(batch):
    student = tiny_llama()
    for bad, match in [
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"eos_token_id": -5}, "eos_token_id"),
    ]:
        with pytest.raises(ValueError, match=match):
            OnPolicy(student, **{"pad_token_id": PAD, **bad})
    with pytest.raises(TypeError, match="generate"):
        OnPolicy(nn.Linear(2, 2), pad_token_id=PAD)
    rewrite = on_policy(student, lam=1.0)
    with pytest.raises(ValueError, match="labels"):
        rewrite(Batch(args=(), kwargs={"input_ids": batch.kwargs["input_ids"]}), 0)


# -- in the engine -------------------------------------------------------------------------------


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, distiller, step, logs):
        self.values.append(logs["loss"])


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_a_distiller_trains_on_the_students_samples(rows, grad_accum_steps):
    student, teacher = tiny_llama(seed=1), tiny_llama(seed=2).eval()
    before = [p.detach().clone() for p in student.parameters()]
    rewrite = on_policy(student, lam=1.0, max_new_tokens=4)
    losses = Losses()
    Distiller(
        student,
        teachers.Module(teacher),
        Objective(kd=token_kd_term(student, teacher, divergence="reverse_kl")),
        batch_transform=rewrite,
        callbacks=[losses],
        grad_accum_steps=grad_accum_steps,
        lr=1e-2,
        progress=False,
        cpu=True,
    ).fit(DataLoader(rows, batch_size=4 // grad_accum_steps), max_steps=3)
    assert rewrite.generated_batches == 3 * grad_accum_steps
    assert rewrite.generated_tokens > 0
    assert len(losses.values) == 3 and all(math.isfinite(v) and v > 0 for v in losses.values)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
    assert student.training
