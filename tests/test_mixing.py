"""Function matching: mixup and CutMix of training batches (data.mixing), cross-entropy on
mixed labels, and data.mix in recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill import losses
from distill.batch import Batch
from distill.data import mixing
from distill.data.mixing import BatchMix, soft_labels
from distill.recipes import RecipeError, load_recipe
from distill.runs import run_recipe
from distill.runs.tasks.classify import task as classify

ROOT = Path(__file__).parent.parent


def batch(n=16, classes=5, unlabelled=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    labels[:unlabelled] = -100
    return Batch(args=(torch.randn(n, 1, 8, 8, generator=g),), labels=labels)


def test_mixup_mixes_inputs_and_labels_with_one_lambda_and_drops_unlabelled_pairs():
    b = batch(unlabelled=4)
    mix = BatchMix("mixup", classes=5, alpha=1.0, seed=3)
    out = mix(b, step=7)
    rng = np.random.default_rng([3, 7, 0])  # the draws of (seed 3, step 7, micro-batch 0)
    assert rng.random() < 1.0  # prob = 1: every batch is mixed
    lam, order = float(rng.beta(1.0, 1.0)), torch.from_numpy(rng.permutation(16))
    torch.testing.assert_close(out.args[0], lam * b.args[0] + (1 - lam) * b.args[0][order])
    expected = lam * soft_labels(b.labels, 5) + (1 - lam) * soft_labels(b.labels[order], 5)
    known = (b.labels != -100) & (b.labels[order] != -100)
    torch.testing.assert_close(out.labels[known], expected[known])
    assert (out.labels[~known] == 0).all() and known.sum() < 16  # transfer rows: no label
    assert out.rows(labelled_only=True) == int(known.sum()) and out.rows(False) == 16
    # the same (seed, step, micro-batch) mixes alike: resumed runs, and baseline vs student
    again = BatchMix("mixup", classes=5, alpha=1.0, seed=3)(b, step=7)
    assert torch.equal(again.args[0], out.args[0])
    assert not torch.equal(mix(b, step=7).args[0], out.args[0])  # the next micro-batch
    # prob: the share of batches mixed
    rare = BatchMix("mixup", classes=5, prob=0.01, seed=0)
    unmixed = sum(rare(b, step).args[0] is b.args[0] for step in range(50))
    assert unmixed >= 45


def test_cutmix_pastes_a_box_and_weighs_labels_by_its_area():
    b = batch()
    out = BatchMix("cutmix", classes=5, alpha=1.0, seed=1)(b, step=0)
    changed = (out.args[0] != b.args[0]).any(0).any(0)  # (8, 8): where some row changed
    area = float(changed.float().mean())
    probs = out.labels
    # each row keeps 1 − area of itself (its own class weight) unless its partner shares it
    own = probs.gather(1, b.labels.unsqueeze(1)).squeeze(1)
    assert torch.isclose(own.min(), torch.tensor(1 - area), atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))
    box = mixing.cut_box(torch.Size([1, 32, 32]), 0.75, np.random.default_rng(0))
    sides = [s.stop - s.start for s in box[1:]]
    assert all(s <= 16 for s in sides)  # (1 − 0.75)^(1/2) of 32, clipped at the edges


def test_cross_entropy_on_mixed_labels_is_the_mix_of_the_two_cross_entropies():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    a, b = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([1, 1, 3, 0, 2, 2])
    lam = 0.3
    probs = lam * soft_labels(a, 4) + (1 - lam) * soft_labels(b, 4)
    expected = lam * F.cross_entropy(logits, a) + (1 - lam) * F.cross_entropy(logits, b)
    torch.testing.assert_close(losses.cross_entropy(logits, probs), expected)
    probs[0] = 0  # a row with no label is left out of the mean
    expected = lam * F.cross_entropy(logits[1:], a[1:]) + (1 - lam) * F.cross_entropy(
        logits[1:], b[1:]
    )
    torch.testing.assert_close(losses.cross_entropy(logits, probs), expected)
    smoothed = losses.cross_entropy(logits[1:], soft_labels(a[1:], 4), label_smoothing=0.1)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits[1:], a[1:], label_smoothing=0.1))


def digits_recipe(digits_idx_dir, tmp_path, *extra):
    return load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=null", "teacher.train.max_steps=10",
         "train.epochs=null", "train.max_steps=3", f"output.dir={tmp_path}",
         "output.latency_repeats=1", *extra],
    )  # fmt: skip


@pytest.mark.e2e
def test_a_recipe_with_data_mix_mixes_the_label_only_and_the_distilled_students_batches(
    digits_idx_dir, tmp_path, monkeypatch
):
    calls = []

    class Counted(BatchMix):
        def __call__(self, batch, step):
            calls.append(step)
            return super().__call__(batch, step)

    monkeypatch.setattr(classify, "BatchMix", Counted)
    recipe = digits_recipe(digits_idx_dir, tmp_path, "data.mix={kind: cutmix, alpha: 1.0}")
    summary = run_recipe(recipe, progress=False, log=lambda m: None)
    assert {"baseline", "student"} <= set(summary["models"])
    assert len(calls) == 6  # 3 steps of each student; the teacher trains unmixed
    models = summary["models"]  # 3 mixed steps: the distilled student heads for its teacher
    assert models["student"]["kl_to_teacher"] < models["baseline"]["kl_to_teacher"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("cache={}", "`data.mix` does not combine with `cache`"),
        ("objective={ce: {loss: cross_entropy}, dkd: {loss: dkd, temperature: 4.0}}",
         "`objective.dkd` does not combine with `data.mix`: dkd reads class ids"),
    ],
)  # fmt: skip
def test_data_mix_refuses_what_cannot_read_mixed_inputs(digits_idx_dir, tmp_path, change, message):
    with pytest.raises(RecipeError, match=message):
        digits_recipe(digits_idx_dir, tmp_path, "data.mix={kind: mixup}", change)


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ("mnist1d_routed.yaml", "data.domains"),
        ("fashion_mnist_data_free.yaml", "data.synthetic"),
        ("fashion_mnist_pate.yaml", "pate"),
    ],
)
def test_data_mix_refuses_the_shipped_recipes_it_cannot_mix(recipe, field):
    with pytest.raises(RecipeError, match=f"`data.mix` does not combine with `{field}`: "):
        load_recipe(ROOT / "recipes" / recipe, ["data.mix={kind: mixup}"])


def test_data_mix_leaves_the_teacher_store_key_alone(digits_idx_dir, tmp_path):
    """Only the students' batches are mixed: the stored teacher is the unmixed recipe's."""
    from distill.runs.store import teacher_cache_dir

    plain = digits_recipe(digits_idx_dir, tmp_path)
    mixed = digits_recipe(digits_idx_dir, tmp_path, "data.mix={kind: mixup, alpha: 0.4}")
    assert teacher_cache_dir(mixed) == teacher_cache_dir(plain)
