"""Teacher-output cache: sparse losses, writing, reading, resuming, checking."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill import Distiller, Objective, Term, losses, teachers
from distill.batch import as_batch
from distill.cache import CacheError, CacheReader, Layout, build_cache, narrowest_id_dtype
from distill.data import WithExampleId
from distill.losses.logits import DIVERGENCES
from distill.losses.sparse import sparse_divergence
from distill.losses.tokens import lm_head_kd, lm_head_sparse_kd
from distill.methods.token_kd import sparse_token_kd_term
from distill.outputs import topk_of
from tests import text_models

OPTIONS = {"jsd": {"beta": 0.3}, "skew_kl": {"skew": 0.1}, "skew_reverse_kl": {"skew": 0.1}}


# -- sparse losses ----------------------------------------------------------------------


@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_sparse_divergence_equals_dense_at_full_k_and_bounds_it_below(divergence):
    student, teacher = torch.randn(12, 50, dtype=torch.float64), 3 * torch.randn(12, 50)
    dense = DIVERGENCES[divergence](
        student, teacher.double(), temperature=2.0, **OPTIONS.get(divergence, {})
    )
    full = sparse_divergence(
        student,
        topk_of(teacher.double(), 50, 2.0),
        divergence=divergence,
        temperature=2.0,
        **OPTIONS.get(divergence, {}),
    )
    assert torch.allclose(full, dense, atol=1e-10)
    previous = 0.0
    for k in (1, 5, 20, 49):  # a lower bound that tightens as k grows
        value = float(
            sparse_divergence(
                student,
                topk_of(teacher.double(), k, 2.0),
                divergence=divergence,
                temperature=2.0,
                **OPTIONS.get(divergence, {}),
            )
        )
        assert previous - 1e-9 <= value <= float(dense) + 1e-9
        previous = value


def test_sparse_kl_pushes_mass_out_of_the_tail():
    """The tail bucket makes the student pay for mass outside the teacher's top-k."""
    teacher = torch.tensor([[8.0, 7.0, 0.0, 0.0, 0.0, 0.0]])
    student = torch.zeros(1, 6, requires_grad=True)
    losses.sparse_kl(student, topk_of(teacher, 2)).backward()
    assert (student.grad[0, 2:] > 0).all() and (student.grad[0, :2] < 0).all()


def test_sparse_loss_refuses_another_temperature_and_foreign_ids():
    target = topk_of(torch.randn(4, 10), 3, temperature=1.0)
    with pytest.raises(ValueError, match=r"temperature 1\.0"):
        losses.sparse_kl(torch.randn(4, 10), target, temperature=2.0)
    with pytest.raises(ValueError, match="beyond the student's vocabulary"):
        lm_head_sparse_kd(torch.randn(4, 8), torch.randn(6, 8), target)


def test_chunked_sparse_head_loss_matches_the_plain_one_with_gradients():
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    head = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    teacher = topk_of(torch.randn(3, 7, 40, dtype=torch.float64) * 2, 8, temperature=1.5)
    mask = torch.rand(3, 7) > 0.3
    chunked = lm_head_sparse_kd(
        hidden, head, teacher, divergence="jsd", temperature=1.5, mask=mask, chunk_size=4
    )
    plain = sparse_divergence(
        hidden @ head.T, teacher, divergence="jsd", temperature=1.5, mask=mask, beta=0.5
    )
    assert torch.allclose(chunked, plain)
    grads = torch.autograd.grad(chunked, (hidden, head))
    expected = torch.autograd.grad(plain, (hidden, head))
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want)


def test_sparse_head_loss_at_full_k_equals_the_dense_head_loss():
    hidden, t_hidden = (
        torch.randn(10, 16, dtype=torch.float64),
        torch.randn(10, 12, dtype=torch.float64),
    )
    head, t_head = (
        torch.randn(30, 16, dtype=torch.float64),
        torch.randn(30, 12, dtype=torch.float64),
    )
    dense = lm_head_kd(hidden, head, t_hidden, t_head, divergence="reverse_kl", temperature=2.0)
    sparse = lm_head_sparse_kd(
        hidden,
        head,
        topk_of(t_hidden @ t_head.T, 30, 2.0),
        divergence="reverse_kl",
        temperature=2.0,
    )
    assert torch.allclose(dense, sparse)


# -- a dense cache for a classifier -------------------------------------------------------


class Rows(Dataset):
    def __init__(self, n=100, features=6, classes=5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=g)
        self.y = torch.randint(classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5))


def dense_layout(n=100, **changes):
    return Layout(kind="dense", num_examples=n, shard_size=32, **changes)


def build(folder, data, teacher=None, **kwargs):
    teacher = teacher or teachers.Module(classifier(1))
    layout = kwargs.pop("layout", dense_layout(len(data)))
    return build_cache(
        teacher, data, folder, layout, batch_size=10, progress=False, log=lambda m: None, **kwargs
    )


def checksums(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("shard-*")}


def test_dense_cache_returns_the_teachers_logits_exactly_in_any_order(tmp_path):
    data = WithExampleId(Rows())
    summary = build(tmp_path / "c", data)
    manifest = summary["manifest"]
    assert manifest["bytes_per_example"] == 5 * 4 and len(manifest["shards"]) == 4
    live = teachers.Module(classifier(1))
    reference = {}  # the teacher on the batches the cache was built from: 10 per batch, by shard
    for start in range(0, 100, 32):
        shard = torch.utils.data.Subset(data, range(start, min(start + 32, 100)))
        for raw in DataLoader(shard, batch_size=10):
            batch = as_batch(raw)
            logits = live(batch).logits
            reference.update(zip(batch.meta["example_id"].tolist(), logits, strict=True))
    cached = teachers.Cached(tmp_path / "c")
    assert isinstance(cached.reader._field(0, "logits"), np.memmap)
    for raw in DataLoader(data, batch_size=13, shuffle=True):
        batch = as_batch(raw)
        expected = torch.stack([reference[i] for i in batch.meta["example_id"].tolist()])
        assert torch.equal(cached(batch).logits, expected)


def test_training_against_the_cache_equals_training_against_the_live_teacher(tmp_path):
    data = WithExampleId(Rows())
    build(tmp_path / "c", data)
    results = []
    for teacher in (teachers.Module(classifier(1)), teachers.Cached(tmp_path / "c")):
        student = classifier(2)
        torch.manual_seed(0)
        objective = Objective(kd=Term(losses.kl, temperature=2.0), ce=Term(losses.cross_entropy))
        Distiller(student, teacher, objective, progress=False, cpu=True, lr=1e-2).fit(
            DataLoader(data, batch_size=16, shuffle=True), max_steps=6
        )
        results.append(torch.cat([p.flatten() for p in student.parameters()]))
    # equal up to the rounding of the teacher's matmuls on differently sized batches
    assert torch.allclose(results[0], results[1], atol=1e-6)


class Dies:
    """A teacher killed after ``calls`` batches, like a job that runs out of time."""

    def __init__(self, calls):
        self.teacher, self.calls, self.seen = teachers.Module(classifier(1)), calls, 0

    def __call__(self, batch, logits=True):
        self.seen += 1
        if self.seen > self.calls:
            raise KeyboardInterrupt("killed")
        return self.teacher(batch)


def test_a_killed_build_resumes_to_the_same_cache_without_redoing_shards(tmp_path):
    data = WithExampleId(Rows())
    build(tmp_path / "whole", data)
    dying = Dies(calls=7)  # 4 batches per shard: dies inside the second shard
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "resumed", data, teacher=dying)
    with pytest.raises(CacheError, match="incomplete \\(1 of 4 shards\\)"):
        teachers.Cached(tmp_path / "resumed")
    again = Dies(calls=1000)
    summary = build(tmp_path / "resumed", data, teacher=again)
    assert summary["written_shards"] == [1, 2, 3] and again.seen == 4 + 4 + 1
    assert checksums(tmp_path / "resumed") == checksums(tmp_path / "whole")
    assert not list((tmp_path / "resumed").glob(".*.tmp"))


def test_workers_fill_one_cache_by_shard(tmp_path):
    data = WithExampleId(Rows())
    build(tmp_path / "one", data)
    first = build(tmp_path / "two", data, worker=0, workers=2)
    assert first["written_shards"] == [0, 2] and first["manifest"] is None
    second = build(tmp_path / "two", data, worker=1, workers=2)
    assert second["written_shards"] == [1, 3] and second["manifest"] is not None
    assert checksums(tmp_path / "two") == checksums(tmp_path / "one")


def test_corrupted_or_truncated_shards_are_detected(tmp_path):
    data = WithExampleId(Rows())
    build(tmp_path / "c", data)
    path = tmp_path / "c" / "shard-00002.logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    cached = teachers.Cached(tmp_path / "c")
    batch = as_batch(next(iter(DataLoader(data, batch_size=10))))
    cached(batch)  # shard 0 is intact
    with pytest.raises(CacheError, match=r"shard-00002\.logits\.npy: checksum mismatch"):
        cached(as_batch(next(iter(DataLoader(torch.utils.data.Subset(data, [70]))))))
    path.write_bytes(bytes(raw[:-8]))
    with pytest.raises(CacheError, match="wrong size"):
        teachers.Cached(tmp_path / "c")


def test_a_cache_read_with_other_data_or_settings_is_an_error_that_says_what_differs(tmp_path):
    data = WithExampleId(Rows())
    build(tmp_path / "c", data, layout=dense_layout(fingerprint={"dataset": "rows", "seq_len": 8}))
    with pytest.raises(CacheError, match="seq_len: cache built with 8, now 16"):
        teachers.Cached(tmp_path / "c", expect={"dataset": "rows", "seq_len": 16})
    other = WithExampleId(Rows(seed=1))  # same ids, other inputs
    with pytest.raises(CacheError, match="inputs differ"):
        teachers.Cached(tmp_path / "c")(as_batch(next(iter(DataLoader(other, batch_size=4)))))
    with pytest.raises(CacheError, match="no example_id"):
        teachers.Cached(tmp_path / "c")(as_batch(next(iter(DataLoader(Rows(), batch_size=4)))))
    with pytest.raises(CacheError, match="not in the cache"):
        teachers.Cached(tmp_path / "c")(
            as_batch({"x": torch.zeros(1, 6), "example_id": torch.tensor([500])})
        )
    with pytest.raises(CacheError, match="shard_size: cache has 32, asked 50"):
        build(
            tmp_path / "c",
            data,
            layout=Layout(
                kind="dense",
                num_examples=100,
                shard_size=50,
                fingerprint={"dataset": "rows", "seq_len": 8},
            ),
        )
    with pytest.raises(CacheError, match="keeps only its outputs"):
        Distiller(
            classifier(),
            teachers.Cached(tmp_path / "c"),
            Objective(h=Term(losses.hint, student="0", teacher="0")),
        )


# -- a top-k cache for a language model ----------------------------------------------------


def tiny_llama(seed=0, vocab=300):
    return text_models.tiny_llama(seed, vocab).eval()


def token_rows(n=24, length=12, vocab=300):
    ids = torch.randint(vocab, (n, length + 1), generator=torch.Generator().manual_seed(0))
    return [
        {"input_ids": row[:-1], "labels": row[1:], "example_id": torch.tensor(i)}
        for i, row in enumerate(ids)
    ]


def topk_layout(k, n=24, dtype="float16", temperature=1.0):
    return Layout(
        kind="topk",
        num_examples=n,
        shard_size=10,
        k=k,
        vocab_size=300,
        temperature=temperature,
        logprob_dtype=dtype,
    )


def test_topk_cache_round_trip_within_the_stated_precision(tmp_path):
    teacher, rows = teachers.Module(tiny_llama()), token_rows()
    summary = build(tmp_path / "c", rows, teacher=teacher, layout=topk_layout(16, temperature=2.0))
    manifest = summary["manifest"]
    assert narrowest_id_dtype(300) == np.uint16
    assert manifest["bytes_per_token"] == 16 * (2 + 2) + 2  # uint16 ids, float16 log-probs, tail
    batch = as_batch(torch.utils.data.default_collate(rows[5:13]))
    live = topk_of(teacher(batch).logits, 16, temperature=2.0)
    cached = teachers.Cached(tmp_path / "c")(batch).topk
    assert cached.temperature == 2.0
    assert torch.equal(cached.ids, live.ids)
    # float16 keeps 11 significant bits: |Δ log p| ≤ 2⁻¹¹ |log p| (rounding to nearest)
    assert ((cached.logprobs - live.logprobs).abs() <= 2**-11 * live.logprobs.abs() + 1e-7).all()
    assert ((cached.tail - live.tail).abs() <= 2**-11 * live.tail.abs() + 1e-7).all()


def test_training_against_a_full_topk_cache_equals_dense_token_kd(tmp_path):
    teacher_model, rows = tiny_llama(), token_rows()
    build(
        tmp_path / "c",
        rows,
        teacher=teachers.Module(teacher_model),
        layout=topk_layout(300, dtype="float32"),
    )
    weights = []
    for sparse in (False, True):
        student = tiny_llama(seed=3)
        if sparse:
            teacher, term = teachers.Cached(tmp_path / "c"), sparse_token_kd_term(student)
        else:
            from distill.methods.token_kd import token_kd_term

            teacher, term = teachers.Module(teacher_model), token_kd_term(student, teacher_model)
        torch.manual_seed(0)
        Distiller(student, teacher, Objective(kd=term), progress=False, cpu=True, lr=1e-3).fit(
            DataLoader(rows, batch_size=8, shuffle=True), max_steps=3
        )
        weights.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)
    assert not torch.equal(
        weights[0], torch.cat([p.flatten() for p in tiny_llama(seed=3).parameters()])
    )


def test_manifest_lists_every_file_with_its_checksum(tmp_path):
    build(
        tmp_path / "c", token_rows(), teacher=teachers.Module(tiny_llama()), layout=topk_layout(4)
    )
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    files = {f["file"]: f["sha256"] for s in manifest["shards"] for f in s["files"].values()}
    assert files == {n: h for n, h in checksums(tmp_path / "c").items() if n.endswith(".npy")}
    assert CacheReader(tmp_path / "c").fields == [
        "example_id",
        "input_hash",
        "ids",
        "logprobs",
        "tail",
    ]


@pytest.mark.e2e
def test_a_classifier_recipe_trains_against_its_dense_cache(tmp_path, monkeypatch):
    """`distill cache` stores the teacher's logits on the transfer, validation and test
    rows; `distill run` then trains the student against them and ends where a run against
    the live teacher ends."""
    from pathlib import Path

    from typer.testing import CliRunner

    from distill import cli
    from distill.recipes import RecipeError, load_recipe
    from distill.runs import run_recipe

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "weights"))
    recipe_file = Path(__file__).parent.parent / "recipes" / "mnist1d_kd.yaml"
    overrides = [
        "teacher.train.epochs=2",
        "train.epochs=3",
        "baseline=false",
        f"output.dir={tmp_path}",
        "output.latency_repeats=2",
    ]
    quiet = {"progress": False, "log": lambda m: None}
    live = run_recipe(load_recipe(recipe_file, overrides), out_dir=tmp_path / "live", **quiet)
    args = ["cache", str(recipe_file), *[f"--set={o}" for o in [*overrides, "cache={}"]], "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["kind"] == "dense" and manifest["bytes_per_example"] == 10 * 4
    assert manifest["num_examples"] == 4_000 + 1_000  # transfer + validation, then test

    messages = []
    recipe = load_recipe(recipe_file, [*overrides, "cache={}"])
    cached = run_recipe(recipe, out_dir=tmp_path / "cached", progress=False, log=messages.append)
    assert any("complete, reused" in m for m in messages)
    assert any("learns from the teacher cache" in m for m in messages)
    difference = cached["models"]["student"]["accuracy"] - live["models"]["student"]["accuracy"]
    assert abs(difference) < 0.02

    with pytest.raises(RecipeError, match="augment"):
        load_recipe(recipe_file, [*overrides, "cache={}", "data.augment=true"])
    refused = "`cache.top_k` does not combine with `task: classification`: a top-k cache"
    with pytest.raises(RecipeError, match=refused):
        load_recipe(recipe_file, [*overrides, "cache={top_k: 8}"])
