"""distill doctor on language-model recipes: each check on a constructed case that must be
flagged and one that must not, then the whole doctor on tiny chat recipes."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from distill import Objective, Term, cli, losses, teachers
from distill.batch import as_batch
from distill.data.text import ChatExamples
from distill.doctor.lm_checks import (
    accumulation_check,
    kept_mass,
    lm_teacher_cost_check,
    sampling_distribution,
    sampling_temperature_check,
    teacher_mode_check,
    top_k_mass_check,
)
from distill.doctor.run import diagnose
from distill.doctor.tokenizers import template_check, truncation_check, vocabulary_check
from distill.outputs import TeacherOutput
from distill.recipes import RecipeError, load_recipe
from distill.runs import run_recipe
from distill.training.checkpoint import save_weights
from tests.text_models import WORDS, chat_tokenizer, tiny_llama

ROOT = Path(__file__).parent.parent


def shuffled_ids(tokenizer):
    """A tokenizer with the same tokens under other ids (another model's vocabulary)."""
    other = chat_tokenizer()
    vocab = tokenizer.get_vocab()
    words = sorted(vocab, key=vocab.get)
    core = json.loads(other.backend_tokenizer.to_str())
    core["model"]["vocab"] = {w: i for i, w in enumerate([*words[:6], *reversed(words[6:])])}
    from tokenizers import Tokenizer

    other._tokenizer = Tokenizer.from_str(json.dumps(core))
    return other


# -- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_flags_another_tokenizers_ids_and_unequal_heads():
    tok = chat_tokenizer()
    n = len(tok)
    other = shuffled_ids(tok)
    assert other.get_vocab() != tok.get_vocab()
    flagged = vocabulary_check(
        tok, student_rows=n, teacher_rows=n, own_tokenizers={"teacher": other}
    )
    assert flagged.verdict == "problem" and "teacher.tokenizer" in flagged.suggestion
    assert 0 < flagged.measurements["same_id_share"]["teacher"] < 1
    # the same mismatch, distilled across tokenizers on purpose, is fine
    crossed = vocabulary_check(
        tok, student_rows=n, teacher_rows=n, own_tokenizers={"teacher": other}, cross_tokenizer=True
    )
    assert crossed.verdict == "ok"
    # a padded teacher head: refused by the KD term unless vocab_size says which rows count
    padded = dict(student_rows=n, teacher_rows=n + 9, own_tokenizers={}, kd_term="kd")
    unequal = vocabulary_check(tok, **padded)
    assert (
        unequal.verdict == "problem"
        and f"objective.kd.options.vocab_size: {n}" in unequal.suggestion
    )
    assert vocabulary_check(tok, **padded, vocab_option=n, padded_mass=0.0).verdict == "ok"
    # mass on the padded ids is a warning when nothing cuts them off
    same = dict(student_rows=n + 9, teacher_rows=n + 9, own_tokenizers={})
    assert vocabulary_check(tok, **same, padded_mass=0.02).verdict == "warning"
    assert vocabulary_check(tok, **same, padded_mass=1e-6).verdict == "ok"
    # a head smaller than the tokenizer cannot predict its last ids
    assert (
        vocabulary_check(tok, student_rows=n - 1, teacher_rows=n, own_tokenizers={}).verdict
        == "problem"
    )


# -- chat template and stop tokens --------------------------------------------------------------


def test_template_flags_a_foreign_template_missing_stop_tokens_and_other_specials():
    tok = chat_tokenizer()
    theirs = chat_tokenizer()
    theirs.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    )
    flagged = template_check(tok, {"teacher": theirs}, chat=True, stop_share=1.0)
    assert flagged.verdict == "problem" and "not the teacher's own" in flagged.summary
    # packed text renders no template: the same teacher is fine there
    assert template_check(tok, {"teacher": theirs}, chat=False).verdict == "ok"
    # answers that never hold a stop token
    assert template_check(tok, {}, chat=True, stop_share=0.5).verdict == "problem"
    assert template_check(tok, {}, chat=True, stop_share=1.0).verdict == "ok"
    # the same template with another eos token
    other_eos = chat_tokenizer()
    other_eos.eos_token = "<|end|>"
    special = template_check(tok, {"student": other_eos}, chat=True, stop_share=1.0)
    assert special.verdict == "warning" and "eos_token" in special.summary
    # a teacher that reads the text with its own tokenizer keeps its own special tokens
    crossed = template_check(tok, {"teacher": other_eos}, chat=True, stop_share=1.0,
                             cross_tokenizer=True)  # fmt: skip
    assert crossed.verdict == "ok"


# -- truncation -----------------------------------------------------------------------------------


def test_truncation_flags_rows_that_lose_their_answers_and_names_a_seq_len():
    fits = [(6, 20)] * 99 + [(6, 40)]
    ok = truncation_check(fits, seq_len=32)
    assert ok.verdict == "ok" and ok.measurements["cut_share"] == pytest.approx(0.01)
    cut = truncation_check([(6, 20)] * 90 + [(6, 36)] * 10, seq_len=32)  # 10% lose 3 tokens
    assert cut.verdict == "warning" and cut.measurements["recommended_seq_len"] == 40
    no_answer = truncation_check([(40, 50)] * 5 + [(6, 20)] * 95, seq_len=32)
    assert no_answer.verdict == "problem" and no_answer.measurements["no_answer_share"] == 0.05
    assert truncation_check(None, seq_len=32).verdict == "ok"  # packed text


# -- top-k mass ---------------------------------------------------------------------------------


def test_top_k_mass_flags_a_flat_teacher_behind_a_small_cache_and_not_a_peaked_one():
    torch.manual_seed(0)
    flat = torch.randn(200, 1000) * 0.5
    peaked = flat.clone()
    peaked[:, :4] += 12.0
    mass = kept_mass(flat, [1, 16, 1000])
    assert torch.allclose(mass[:, -1], torch.ones(200)) and (mass[:, 1] < 0.1).all()
    flagged = top_k_mass_check(flat, temperature=1.0, k=16, sparse="top-k cache")
    assert flagged.verdict == "problem" and "cache.top_k" in flagged.suggestion
    assert top_k_mass_check(peaked, temperature=1.0, k=16, sparse="top-k cache").verdict == "ok"
    # dense: nothing is lost, whatever the teacher
    assert top_k_mass_check(flat, temperature=1.0, k=None, sparse=None).verdict == "ok"
    # a served teacher's kept mass, measured from its answers
    served = top_k_mass_check(None, temperature=1.0, k=20, sparse="served teacher",
                              served_mass=torch.full((50,), 0.9))  # fmt: skip
    assert served.verdict == "warning"


# -- sampling vs loss temperature -----------------------------------------------------------------


def test_sampling_temperature_flags_greedy_answers_taught_at_t1_and_not_matching_ones():
    torch.manual_seed(0)
    logits = torch.randn(300, 50)
    greedy = sampling_distribution(logits, 0.0)
    assert torch.equal(greedy.argmax(-1), logits.argmax(-1)) and torch.equal(
        greedy.sum(-1), torch.ones(300)
    )
    nucleus = sampling_distribution(logits, 1.0, top_p=0.5)
    assert ((nucleus > 0).sum(-1) < 50).all() and torch.allclose(nucleus.sum(-1), torch.ones(300))
    flagged = sampling_temperature_check(
        logits, loss_temperature=1.0, samplers={"generate": (0.0, 1.0)}
    )
    assert flagged.verdict == "warning" and "generate.temperature: 1" in flagged.suggestion
    matching = sampling_temperature_check(
        logits, loss_temperature=1.0, samplers={"on_policy": (1.0, 1.0)}
    )
    assert matching.verdict == "ok" and matching.measurements["tvd"]["on_policy"] < 1e-6
    # sequence-level KD alone (no token term): greedy answers are a choice, not a conflict
    assert (
        sampling_temperature_check(
            logits, loss_temperature=None, samplers={"generate": (0.0, 1.0)}
        ).verdict
        == "ok"
    )
    assert sampling_temperature_check(logits, loss_temperature=1.0, samplers={}).verdict == "ok"


# -- teacher mode -------------------------------------------------------------------------------


class TrainModeTeacher(teachers.Module):
    """A user's teacher that forgets eval(): dropout stays on."""

    def __call__(self, batch, logits=True):
        self.model.train()
        with torch.no_grad():
            return TeacherOutput(logits=batch.run(self.model).logits)


def test_teacher_mode_flags_a_teacher_whose_dropout_is_on_and_not_the_frozen_wrapper():
    model = tiny_llama(seed=1, attention_dropout=0.5)
    batch = as_batch({"input_ids": torch.randint(6, 23, (2, 12))})
    noisy = TrainModeTeacher(copy.deepcopy(model))
    noisy.model.train()
    flagged = teacher_mode_check(noisy, noisy.model, batch)
    assert flagged.verdict == "problem" and flagged.measurements["max_difference"] > 1e-3
    model.train()  # handed over in train mode: teachers.Module puts it in eval
    fine = teacher_mode_check(teachers.Module(model), model, batch)
    assert fine.verdict == "ok" and fine.measurements["max_difference"] == 0.0


# -- gradient accumulation --------------------------------------------------------------------


def chat_rows(n=8, seed=0, seq_len=24):
    """Four answers of 12 words, then four of one: micro-batches of 4 differ in tokens."""
    rng = random.Random(seed)
    records = [
        {"prompt": " ".join(rng.choice(WORDS) for _ in range(2)),
         "completion": " ".join(rng.choice(WORDS) for _ in range(12 if i < n // 2 else 1))}
        for i in range(n)
    ]  # fmt: skip
    return ChatExamples(records, chat_tokenizer(), seq_len)


def unmasked_kl(student_logits, teacher_logits):
    """KL over every position, padding and prompts included: it ignores the mask."""
    log_s = F.log_softmax(student_logits.float(), -1)
    log_t = F.log_softmax(teacher_logits.float(), -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def test_accumulation_flags_a_term_that_ignores_the_mask_and_not_the_built_in_ones():
    rows = chat_rows()
    student, teacher = tiny_llama(seed=2), teachers.Module(tiny_llama(seed=3))

    def built_in(model):
        return Objective(
            ce=Term(losses.cross_entropy, 0.5), kd=Term(losses.kl, 0.5, temperature=2.0)
        )

    def own(model):
        return Objective(ce=Term(losses.cross_entropy, 0.5), kd=Term(unmasked_kl, 0.5))

    fine = accumulation_check(student, teacher, built_in, rows, batch_size=4, accum=2)
    assert fine.verdict == "ok" and fine.measurements["relative_difference"] < 1e-5, fine.summary
    counts = fine.measurements["tokens_per_micro_batch"]
    assert len(counts) == 2 and counts[0] != counts[1]
    flagged = accumulation_check(student, teacher, own, rows, batch_size=4, accum=2)
    assert flagged.verdict == "problem" and "masked_mean" in flagged.suggestion, flagged.summary


# -- teacher cost -------------------------------------------------------------------------------


def test_teacher_cost_per_token_flags_a_long_run_with_a_big_teacher_and_not_a_short_one():
    big = teachers.Module(
        tiny_llama(seed=1, hidden_size=256, intermediate_size=1024, num_hidden_layers=6)
    )
    student = tiny_llama(seed=2)
    batch = as_batch({"input_ids": torch.randint(6, 23, (8, 32))})
    common = dict(
        cache_batches=10, cache_bytes_per_token=6 * 64, reads_logits=True, min_seconds=0.0
    )
    flagged = lm_teacher_cost_check(big, student, batch, micro_batches=10_000, **common)
    assert flagged.verdict == "warning" and "distill cache" in flagged.suggestion, flagged.summary
    assert flagged.measurements["cache_bytes"] == 6 * 64 * 256 * 10
    short = lm_teacher_cost_check(big, student, batch, micro_batches=5, **common)
    assert short.verdict == "ok" and "too few batches" in short.summary
    # a teacher with its own tokenizer cannot be cached: the fix is another
    uncached = lm_teacher_cost_check(big, student, batch, micro_batches=10_000, cacheable=False,
                                     **common)  # fmt: skip
    assert uncached.verdict == "warning" and "autocast" in uncached.suggestion
    assert "cache" not in uncached.suggestion


# -- the whole doctor on tiny recipes ----------------------------------------------------


def chat_recipe(tmp_path, *, stop_on_end: bool, seq_len: int, monkeypatch):
    """A tiny chat recipe: a seeded Llama teacher, a random student, 60 conversations whose
    answers take 1 to 14 words."""
    tok = chat_tokenizer()
    if stop_on_end:
        tok.eos_token = "<|end|>"  # the template ends every turn with it
    tok.save_pretrained(tmp_path / "tok")
    save_weights(tiny_llama(seed=5), tmp_path / "teacher.safetensors")
    rng = random.Random(0)
    rows = [
        {"messages": [
            {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(3))},
            {"role": "assistant",
             "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))},
        ]}
        for _ in range(60)
    ]  # fmt: skip
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny = (
        "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
        "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}"
    )
    return [
        "teacher.model=hf-config:llama", f"teacher.args={tiny}",
        f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
        "student.model=hf-config:llama", f"student.args={tiny}",
        f"data.source={tmp_path / 'chat.jsonl'}", f"data.tokenizer=hf:{tmp_path / 'tok'}",
        f"data.seq_len={seq_len}", "data.batch_size=4", "data.val_blocks=4", "data.test_blocks=4",
        "train.max_steps=2", "train.grad_accum_steps=2", "train.eval_every=2",
        "output.latency_repeats=1", f"output.dir={tmp_path}",
    ]  # fmt: skip


@pytest.mark.e2e
def test_doctor_on_a_chat_recipe_flags_cut_answers_and_missing_stops_and_the_report_shows_them(
    tmp_path, monkeypatch, plots
):
    recipe_file = ROOT / "recipes" / "llm_seqkd.yaml"
    overrides = [
        *chat_recipe(tmp_path, stop_on_end=False, seq_len=12, monkeypatch=monkeypatch),
        "data.source=" + str(tmp_path / "chat.jsonl"), "generate=null",
    ]  # fmt: skip
    args = ["doctor", str(recipe_file), "--json", *[f"--set={o}" for o in overrides]]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout)
    verdicts = {f["check"]: f["verdict"] for f in out["findings"]}
    assert verdicts["truncation"] == "problem" and verdicts["chat_template"] == "problem"
    assert verdicts["vocabulary"] == "ok" and verdicts["accumulation"] == "ok"
    assert verdicts["teacher_mode"] == "ok"
    run_dir = tmp_path / "llm_seqkd"
    assert "Sequence length" in (run_dir / "doctor.md").read_text()
    assert (run_dir / "plots" / "doctor_checks.png").stat().st_size > 10_000
    run_recipe(
        load_recipe(recipe_file, [*overrides, "baseline=false"]), progress=False, log=lambda m: None
    )
    assert "Chat template and stop tokens" in (run_dir / "report.md").read_text()


@pytest.mark.e2e
def test_doctor_passes_the_same_chat_recipe_once_rows_fit_and_answers_stop(tmp_path, monkeypatch):
    overrides = [
        *chat_recipe(tmp_path, stop_on_end=True, seq_len=32, monkeypatch=monkeypatch),
        "generate=null",
    ]
    out = diagnose(
        load_recipe(ROOT / "recipes" / "llm_seqkd.yaml", overrides),
        progress=False,
        log=lambda m: None,
    )
    verdicts = {f["check"]: f["verdict"] for f in out["findings"]}
    assert verdicts["truncation"] == "ok" and verdicts["chat_template"] == "ok", out["findings"]
    assert verdicts["sampling_temperature"] == "ok"  # nothing sampled: the rows are fixed


def test_doctor_refuses_a_sweep_for_language_models():
    with pytest.raises(RecipeError, match="--sweep"):
        diagnose(load_recipe(ROOT / "recipes" / "llm_token_kd.yaml"), sweep=True)


def test_a_doctor_that_cannot_reach_its_teacher_leaves_no_run_directory(
    text_file, tokenizer_dir, tmp_path
):
    from distill.errors import ServedTeacherError

    recipe = load_recipe(
        ROOT / "recipes" / "llm_served_teacher.yaml",
        ["teacher.model=served:http://127.0.0.1:9/v1", "teacher.args={retries: 0}",
         f"data.source={text_file}", f"data.tokenizer=hf:{tokenizer_dir}",
         f"output.dir={tmp_path}"],
    )  # fmt: skip
    with pytest.raises(ServedTeacherError, match=r"127\.0\.0\.1:9"):
        diagnose(recipe, progress=False, log=lambda m: None)
    assert not (tmp_path / "llm_served_teacher").exists()


@pytest.mark.e2e
def test_doctor_on_a_masked_lm_recipe_reads_the_masked_positions(
    text_file, tokenizer_dir, tmp_path
):
    """DistilBERT's triple loss on tiny BERTs: the teacher is trained and stored, its
    distribution read at the masked positions, and one accumulated step equals one batch."""
    from tests.test_language_recipes import tiny_overrides

    recipe = load_recipe(
        ROOT / "recipes" / "distilbert.yaml",
        tiny_overrides("bert", text_file, tokenizer_dir, tmp_path),
    )
    out = diagnose(recipe, progress=False, log=lambda m: None)
    found = {f["check"]: f for f in out["findings"]}
    assert found["vocabulary"]["verdict"] == "ok" and found["truncation"]["verdict"] == "ok"
    assert found["accumulation"]["measurements"]["relative_difference"] < 1e-4
    assert found["top_k_mass"]["measurements"]["by_k"]["1"]["mean"] > 0
    assert found["sampling_temperature"]["verdict"] == "ok"
