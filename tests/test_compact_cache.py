"""The compact top-k encoding (bit-packed ids, a curve over the rank plus a quantised
residual, the tail kept) and the hidden-state cache (final hidden states plus the LM head
once: exact full-vocabulary KD without the teacher's body)."""

import json
import math

import numpy as np
import pytest
import torch

from distill import teachers
from distill.batch import as_batch
from distill.cache import Layout, build_cache
from distill.cache.compact import decode_topk, encode_topk, id_bits, pack, unpack
from distill.data import WithExampleId
from distill.errors import CacheError
from distill.losses.sparse import teacher_buckets
from distill.methods.token_kd import final_hidden_tap, token_kd_term
from distill.outputs import topk_of
from tests.text_models import tiny_llama


@pytest.mark.parametrize("bits", [1, 3, 9, 16, 17, 18])
def test_bit_packing_round_trips(bits):
    values = torch.randint(0, 2**bits, (13, 7)).numpy()
    packed = pack(values, bits)
    assert packed.shape == (13, math.ceil(7 * bits / 8)) and packed.dtype == np.uint8
    assert (unpack(packed, bits, 7) == values).all()


def token_rows(count, length, vocab=400):
    return WithExampleId([{"input_ids": row} for row in torch.randint(0, vocab, (count, length))])


def zipf_logits(rows=256, vocab=49152, seed=0):
    """Logits whose sorted probabilities fall off like a language model's (a power law in
    the rank, with noise), over a SmolLM2-sized vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    rank = torch.arange(1, vocab + 1, dtype=torch.float64)
    base = -1.1 * rank.log() + 0.3 * torch.randn(
        rows, vocab, generator=generator, dtype=torch.float64
    )
    scale = 0.5 + 2 * torch.rand(rows, 1, generator=generator, dtype=torch.float64)
    order = torch.rand(rows, vocab, generator=generator).argsort(dim=-1)  # random token ids
    return torch.empty_like(base).scatter_(-1, order, base * scale)


def bucket_kl(a, b):
    p, q = teacher_buckets(a.logprobs, a.tail), teacher_buckets(b.logprobs, b.tail)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_compact_encoding_keeps_ids_and_mass_and_meets_the_budget_at_k_64():
    target = topk_of(zipf_logits(), 64)
    errors = {}
    for bits in (0, 3, 8):
        arrays = encode_topk(target, 49152, degree=2, residual_bits=bits)
        ids, logprobs, tail = decode_topk(arrays, 64, 49152, degree=2, residual_bits=bits)
        assert torch.equal(ids, target.ids)  # ids exact, rank order kept
        torch.testing.assert_close(tail, target.tail.half().float())  # the tail as stored
        kept = -torch.expm1(tail.double())
        torch.testing.assert_close(logprobs.double().exp().sum(-1), kept, rtol=1e-5, atol=1e-6)
        rebuilt = type(target)(ids, logprobs, tail)
        errors[bits] = bucket_kl(target, rebuilt)
        bytes_per_entry = sum(a.nbytes for a in arrays.values()) / target.ids.numel()
        if bits == 3:
            assert bytes_per_entry == (128 + 24 + 4 + 2 + 2) / 64 == 2.5
    assert errors[8] < errors[3] < errors[0] < 0.1  # more residual bits, less error
    assert errors[3] < 0.005


def test_a_compact_cache_is_read_back_through_teachers_cached(tmp_path):
    """Built by build_cache from a tiny Llama and read by teachers.Cached, its top-k equals
    the plain cache's ids, with log-probs within the encoding's error; plain layouts keep
    their JSON as before the compact fields existed."""
    model = tiny_llama(seed=1, vocab=400).eval()
    rows = token_rows(12, 16)
    plain = Layout(kind="topk", num_examples=12, shard_size=5, k=32, vocab_size=400)
    assert "encoding" not in plain.to_json() and "residual_bits" not in plain.to_json()
    compact = Layout(**{**plain.to_json(), "encoding": "compact", "residual_bits": 4})
    build_cache(teachers.Module(model), rows, tmp_path / "plain", plain, progress=False)
    result = build_cache(
        teachers.Module(model), rows, tmp_path / "compact", compact, progress=False
    )
    manifest = result["manifest"]
    assert manifest["bytes_per_entry"] == (math.ceil(32 * id_bits(400) / 8) + 16 + 4 + 2 + 2) / 32
    batch = next(iter(torch.utils.data.DataLoader(rows, batch_size=12)))
    a = teachers.Cached(tmp_path / "plain")(as_batch(batch)).topk
    b = teachers.Cached(tmp_path / "compact")(as_batch(batch)).topk
    assert torch.equal(a.ids, b.ids)
    assert bucket_kl(a, b) < 1e-3
    assert json.loads((tmp_path / "compact" / "layout.json").read_text())["encoding"] == "compact"


def test_a_cache_built_with_another_tokenizer_is_refused_saying_what_differs(tmp_path):
    rows = token_rows(4, 8)
    fingerprint = {"tokenizer": "wordpiece-400", "tokenizer_size": 400}
    layout = Layout(kind="topk", num_examples=4, shard_size=4, k=4, vocab_size=400,
                    fingerprint=fingerprint)  # fmt: skip
    build_cache(
        teachers.Module(tiny_llama(vocab=400).eval()), rows, tmp_path, layout, progress=False
    )
    with pytest.raises(CacheError, match=r"tokenizer: cache built with 'wordpiece-400', now 'bpe'"):
        teachers.Cached(tmp_path, expect={"tokenizer": "bpe", "tokenizer_size": 400})


def test_a_hidden_state_cache_gives_the_exact_full_vocabulary_kd(tmp_path):
    """hidden × 2 bytes per token; token KD through the stored head equals token KD
    through the live teacher (up to float16 hidden states); a changed head is caught."""
    teacher = tiny_llama(seed=2, vocab=400).eval()
    student = tiny_llama(seed=3, vocab=400, num_hidden_layers=1)
    rows = token_rows(6, 16)
    layout = Layout(kind="hidden", num_examples=6, shard_size=4, hidden_size=32)
    tapped = teachers.Module(teacher, taps=[final_hidden_tap(teacher)])
    result = build_cache(
        tapped, rows, tmp_path, layout, head=teacher.get_output_embeddings(), progress=False
    )
    assert result["manifest"]["bytes_per_token"] == 32 * 2
    cached = teachers.Cached(tmp_path)
    head = cached.head_model()
    batch = as_batch(next(iter(torch.utils.data.DataLoader(rows, batch_size=6))))
    ids = batch.kwargs["input_ids"]
    with torch.no_grad():
        live_hidden = teacher.model(input_ids=ids).last_hidden_state
        student_hidden = student.model(input_ids=ids).last_hidden_state
    from_cache = cached(batch).features["lm_head:input"]
    torch.testing.assert_close(from_cache, live_hidden, atol=2e-3, rtol=1e-3)
    live_term = token_kd_term(student, teacher, temperature=2.0)
    cached_term = token_kd_term(student, head, temperature=2.0)
    assert cached_term.teacher_tap == "lm_head:input"
    cached.add_taps([cached_term.teacher_tap])  # accepted: the states it answers

    def value(term, hidden):
        with torch.no_grad():
            return float(term.loss(student_hidden, hidden, temperature=2.0))

    exact = value(live_term, live_hidden)
    assert value(cached_term, from_cache) == pytest.approx(exact, rel=1e-3)
    (tmp_path / "head.safetensors").write_bytes(b"changed")
    with pytest.raises(CacheError, match=r"head\.safetensors: checksum mismatch"):
        teachers.Cached(tmp_path).head_model()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "settings, per_token",
    [
        (["cache.encoding=compact", "cache.top_k=16"], 18 + 6 + 4 + 2 + 2),  # 9-bit ids
        (["cache.hidden_states=true", "cache.top_k=null"], 32 * 2),
    ],
    ids=["compact", "hidden_states"],
)
def test_llm_cached_kd_recipe_with_a_compact_or_hidden_state_cache(
    settings, per_token, text_file, tokenizer_dir, tmp_path
):
    """The shipped cached-KD recipe (tiny models) builds the cache in the format asked and
    trains its student against it."""
    from distill.recipes import load_recipe
    from distill.runs import run_recipe
    from tests.test_language_recipes import ROOT, tiny_overrides

    overrides = [
        *tiny_overrides("llama", text_file, tokenizer_dir, tmp_path),
        "student.args.keep=2",
        "cache.shard_size=40",
        "baseline=false",
        *settings,
    ]
    messages = []
    recipe = load_recipe(ROOT / "recipes" / "llm_cached_kd.yaml", overrides)
    summary = run_recipe(recipe, progress=False, log=messages.append)
    assert any("learns from the teacher cache" in m for m in messages)
    manifest = json.loads(
        (tmp_path / recipe.name / "teacher_outputs" / "manifest.json").read_text()
    )
    assert manifest["bytes_per_token"] == pytest.approx(per_token)
    student = summary["models"]["student"]
    assert 1.0 < student["perplexity"] < 400 and math.isfinite(student["kl_to_teacher"])


def test_hidden_state_cache_recipe_errors_name_the_field():
    from distill.recipes import RecipeError, load_recipe
    from tests.test_language_recipes import ROOT

    recipe = ROOT / "recipes" / "llm_cached_kd.yaml"
    with pytest.raises(
        RecipeError, match=r"`cache.hidden_states` does not combine with `cache.top_k`"
    ):
        load_recipe(recipe, ["cache.hidden_states=true"])
    with pytest.raises(RecipeError, match=r"cache\.encoding: compact is for a top-k cache"):
        load_recipe(recipe, ["cache.encoding=compact", "cache.top_k=null"])
