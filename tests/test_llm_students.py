"""Students built from teacher layers, layer maps, and a few KD steps on tiny transformers
built from configs (Llama, GPT-2, BERT)."""

import pytest
import torch
import transformers

import distill
from distill import Objective, Term, losses, teachers
from distill.methods.layer_maps import hidden_state_terms, layer_map
from distill.models.shrink import layer_stack, student_from_teacher, uniform_layers

VOCAB = 97


def tiny(kind: str, layers: int = 4):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
        return transformers.LlamaForCausalLM(config)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64
        )
        return transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertForMaskedLM(config)


KINDS = ["llama", "gpt2", "bert"]


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_layer_reproduces_the_teacher(kind):
    teacher = tiny(kind).eval()
    ids = torch.randint(0, VOCAB, (2, 9))
    student = student_from_teacher(teacher, keep=[0, 1, 2, 3]).eval()
    torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_every_other_layer_copies_those_layers(kind):
    teacher = tiny(kind)
    student = student_from_teacher(teacher).eval()
    _, teacher_layers = layer_stack(teacher)
    _, student_layers = layer_stack(student)
    assert len(student_layers) == 2
    for new, old in ((0, 0), (1, 2)):
        for (name, a), (_, b) in zip(
            student_layers[new].state_dict().items(),
            teacher_layers[old].state_dict().items(),
            strict=True,
        ):
            assert torch.equal(a, b), name
    count = getattr(student.config, "num_hidden_layers", getattr(student.config, "n_layer", None))
    assert count == 2
    ids = torch.randint(0, VOCAB, (2, 9))
    assert student(input_ids=ids).logits.shape == (2, 9, VOCAB)
    assert len(layer_stack(teacher)[1]) == 4  # the teacher is untouched
    with pytest.raises(ValueError, match="within"):
        student_from_teacher(teacher, keep=[0, 9])


def test_layer_maps():
    assert uniform_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert layer_map(2, 4) == [(0, 1), (1, 3)]
    # a ratio that is not whole: ⌈(i + 1)·6/4⌉ − 1, the first teacher layer at or beyond
    # each student layer's relative depth (banker's rounding gave [1, 2, 3, 5])
    assert layer_map(4, 6) == [(0, 1), (1, 2), (2, 4), (3, 5)]
    assert layer_map(3, 4) == [(0, 1), (1, 2), (2, 3)]
    assert layer_map(3, 12, "last") == [(2, 11)]
    assert layer_map(2, 4, [(0, 0), (1, 3)]) == [(0, 0), (1, 3)]
    with pytest.raises(ValueError, match="outside"):
        layer_map(2, 4, [(2, 0)])


def causal_batches(n=8, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (length,), generator=g)
        labels = torch.cat([ids[1:], torch.tensor([-100])])  # next token, none after the last
        rows.append({"input_ids": ids, "labels": labels, "loss_mask": labels != -100})
    return rows


def test_token_kd_with_hidden_state_matching_lowers_the_kd_loss():
    teacher = tiny("llama", layers=4)
    # a student half as deep, and narrower layers would get projectors: here the width
    # is the same, so the hint compares hidden states directly
    student = student_from_teacher(teacher, keep=2)
    torch.manual_seed(3)
    for p in student.parameters():  # start away from the teacher
        p.data.add_(0.05 * torch.randn_like(p))
    objective = Objective(
        kd=Term(losses.kl, temperature=2.0),
        **hidden_state_terms(layer_map(2, 4), "model.layers", "model.layers", weight=0.1),
    )
    data = torch.utils.data.DataLoader(causal_batches(), batch_size=4, shuffle=True)
    history = []

    class Record(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            history.append(logs["loss/kd"])

    distill.Distiller(
        student,
        teachers.Module(teacher),
        objective,
        lr=3e-3,
        progress=False,
        select_metric=None,
        callbacks=[Record()],
    ).fit(data, max_steps=20)
    assert set(objective.terms) == {"kd", "hidden_0_1", "hidden_1_3"}
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3


def test_token_kd_term_equals_the_logit_kl_and_trains():
    from distill.methods.token_kd import token_kd_term

    teacher = tiny("llama", layers=4)
    student = student_from_teacher(teacher, keep=2)
    batch = causal_batches(n=4)
    ids = torch.stack([r["input_ids"] for r in batch])
    mask = torch.stack([r["loss_mask"] for r in batch])
    chunked = token_kd_term(student, teacher, temperature=2.0, chunk_size=5)
    objective = Objective(kd=chunked)
    assert chunked.student_tap == chunked.teacher_tap == "model"  # the base model's output
    with (
        distill.Taps(student, [chunked.student_tap]) as s_taps,
        distill.Taps(teacher, [chunked.teacher_tap]) as t_taps,
    ):
        s_logits = student(input_ids=ids).logits
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits
        inputs = distill.LossInputs(
            student_logits=s_logits,
            teacher_logits=t_logits,
            mask=mask,
            student_features=s_taps.pop(),
            teacher_features=t_taps.pop(),
        )
        value = objective(inputs).total
    torch.testing.assert_close(value, losses.kl(s_logits, t_logits, temperature=2.0, mask=mask))

    history = []

    class Record(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            history.append(logs["loss/kd"])

    torch.manual_seed(3)
    for p in student.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    # in training neither model computes its full logits: the heads see one position
    head_positions = []
    for model in (student, teacher):
        model.lm_head.register_forward_hook(lambda m, i, o: head_positions.append(o.shape[1]))
    distill.Distiller(
        student,
        teachers.Module(teacher),
        objective,
        lr=3e-3,
        progress=False,
        select_metric=None,
        callbacks=[Record()],
    ).fit(torch.utils.data.DataLoader(causal_batches(), batch_size=4), max_steps=15)
    assert sum(history[-3:]) < 0.7 * sum(history[:3])
    assert set(head_positions) == {1}


def test_a_student_made_from_a_frozen_teacher_is_trainable():
    teacher = tiny("gpt2")
    teachers.Module(teacher)  # freezes the teacher: eval, requires_grad False
    student = student_from_teacher(teacher, keep=2)
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_similarity_drops_the_layers_that_do_nothing():
    from distill.models.shrink import contiguous_block_to_drop, layers_by_similarity

    teacher = tiny("llama", layers=5)
    for i in (2, 3):  # these layers add nothing to the residual stream
        teacher.model.layers[i].self_attn.o_proj.weight.data.zero_()
        teacher.model.layers[i].mlp.down_proj.weight.data.zero_()
    ids = torch.randint(0, VOCAB, (3, 12))
    assert layers_by_similarity(teacher, {"input_ids": ids}, keep=3) == [0, 1, 4]
    student = student_from_teacher(teacher, 3, calibration={"input_ids": ids})
    assert len(student.model.layers) == 3
    torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits)
    # the last layer always stays, and the counts are checked
    hidden = [torch.randn(2, 4, 8) for _ in range(5)]
    assert contiguous_block_to_drop(hidden, 3)[-1] == 3
    with pytest.raises(ValueError, match="can drop 1 to 3 of 4 layers"):
        contiguous_block_to_drop(hidden, 4)
