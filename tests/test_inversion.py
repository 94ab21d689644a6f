"""DeepInversion: the BatchNorm-statistics regulariser and priors, inputs synthesised from
a teacher alone that it classifies as asked and whose BatchNorm inputs match its running
statistics, and the error for a teacher without BatchNorm."""

import pytest
import torch
from torch import nn

from distill.losses.inversion import batchnorm_statistics, l2_prior, total_variation
from distill.methods.inversion import InversionError, InversionSettings, deep_inversion
from distill.models.small import CNN, MLP


def test_the_batchnorm_statistics_term_by_hand():
    means, variances = [torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 4.0])]
    running = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]
    # ‖(0, 2)‖ + ‖(0, 3)‖ = 5, weighted 2
    assert float(batchnorm_statistics(means, variances, *running, [2.0])) == pytest.approx(10.0)


def test_the_priors_by_hand():
    image = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])  # (1, 1, 2, 2)
    # vertical |3-0|, |1-1| -> mean 1.5; horizontal |1-0|, |1-3| -> mean 1.5
    assert float(total_variation(image)) == pytest.approx(3.0)
    assert float(l2_prior(image)) == pytest.approx((0 + 1 + 9 + 1) / 4)


def trained_cnn():
    """A small CNN trained a little on real digits images (so its BatchNorm statistics
    describe real data)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, channels=(8, 16), hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimizer.step()
    return model.eval()


def bn_gap(model, inputs):
    """Mean distance between the first BatchNorm's input statistics and its running ones."""
    layer = model.block1[1]
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    x = seen["x"]
    return float((x.mean(dim=(0, 2, 3)) - layer.running_mean).norm())


def test_synthetic_inputs_are_classified_as_asked_and_match_the_batchnorm_statistics():
    teacher = trained_cnn()
    targets = torch.arange(10).repeat(4)
    settings = InversionSettings(steps=150, lr=0.1, jitter=1, flip=False)
    images, terms = deep_inversion(teacher, targets, (1, 8, 8), settings, seed=0)
    assert images.shape == (40, 1, 8, 8) and not images.requires_grad
    with torch.no_grad():
        predicted = teacher(images).argmax(dim=1)
    assert (predicted == targets).float().mean() > 0.9
    noise = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert bn_gap(teacher, images) < 0.5 * bn_gap(teacher, noise)
    assert set(terms) == {"ce", "bn", "tv", "l2"}
    # the same seed, the same inputs; the teacher is left as it was
    again, _ = deep_inversion(teacher, targets, (1, 8, 8), settings, seed=0)
    assert torch.equal(images, again) and not teacher.training


def test_inputs_stay_in_their_valid_range_when_one_is_given():
    teacher = trained_cnn()
    free, _ = deep_inversion(teacher, torch.arange(10), (1, 8, 8), InversionSettings(steps=20))
    assert free.min() < -0.5 or free.max() > 1.0  # unbounded, they leave it
    settings = InversionSettings(steps=20, input_range=(-0.5, 1.0))
    bounded, _ = deep_inversion(teacher, torch.arange(10), (1, 8, 8), settings)
    assert bounded.min() >= -0.5 and bounded.max() <= 1.0


def test_adaptive_inversion_adds_the_disagreement_term():
    teacher = trained_cnn()
    student = MLP(64, 10, hidden=16)
    settings = InversionSettings(steps=3, adaptive_weight=1.0)
    _, terms = deep_inversion(teacher, torch.arange(10), (1, 8, 8), settings, student=student)
    assert terms["adaptive"] < 0  # rewarded: the divergence enters with a minus sign


def test_a_teacher_without_batchnorm_gets_an_error_saying_why():
    with pytest.raises(InversionError, match="has no BatchNorm layers; distil it on a transfer"):
        deep_inversion(MLP(64, 10), torch.arange(10), (1, 8, 8))


def test_a_synthetic_set_is_made_once_resumed_and_verified(tmp_path):
    from distill.errors import CacheError
    from distill.methods.synthetic import SyntheticSet, shard_name, write_synthetic_set

    teacher = trained_cnn()
    settings = InversionSettings(steps=2)
    folder = tmp_path / "synthetic"

    def make(**changes):
        options = {"examples": 10, "shape": (1, 8, 8), "num_classes": 10, "teacher_id": "cnn-1",
                   "settings": settings, "batch_size": 4, "seed": 3, "progress": False}  # fmt: skip
        return write_synthetic_set(teacher, folder, **{**options, **changes}, log=notes.append)

    notes: list[str] = []
    make()
    rows = SyntheticSet(folder)
    assert len(rows) == 10 and rows.targets.tolist() == [i % 10 for i in range(10)]
    x, label, meta = rows[7]
    assert x.shape == (1, 8, 8) and label == -100 and meta == {"example_id": 7}
    assert rows.provenance["method"] == "deep_inversion" and rows.provenance["teacher"] == "cnn-1"
    # a rerun keeps intact shards and makes a damaged one again, saying so
    kept = (folder / shard_name(0)).stat().st_mtime_ns
    (folder / shard_name(1)).write_bytes(b"damaged")
    with pytest.raises(CacheError, match=f"{shard_name(1)} missing or damaged"):
        SyntheticSet(folder)
    make()
    assert (folder / shard_name(0)).stat().st_mtime_ns == kept
    assert any("damaged" in note for note in notes)
    assert torch.equal(SyntheticSet(folder).inputs, rows.inputs)  # seeded: the same again
    with pytest.raises(CacheError, match="made with other seed"):
        make(seed=4)


def test_the_data_free_generator_losses_against_float64_sums_by_hand():
    """DAFL's one-hot, activation and information-entropy losses and the L1 / KL
    disagreement, each summed term by term in float64."""
    import math

    from distill.losses import generator as g

    torch.manual_seed(0)
    t, s, f = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 7)
    rows, classes = t.tolist(), 4

    def softmax(z):
        top = max(z)
        e = [math.exp(v - top) for v in z]
        return [v / sum(e) for v in e]

    one_hot = sum(-math.log(softmax(z)[z.index(max(z))]) for z in rows) / 5
    assert float(g.one_hot_loss(t)) == pytest.approx(one_hot, rel=1e-6)
    activation = -sum(abs(v) for row in f.tolist() for v in row) / 35
    assert float(g.activation_loss(f)) == pytest.approx(activation, rel=1e-6)
    mean = [sum(softmax(z)[j] for z in rows) / 5 for j in range(classes)]
    entropy = sum(p * math.log(p) for p in mean)
    assert float(g.information_entropy_loss(t)) == pytest.approx(entropy, rel=1e-6)
    uniform = torch.zeros(3, classes)
    assert float(g.information_entropy_loss(uniform)) == pytest.approx(-math.log(classes))
    assert float(g.dafl_loss(t, f, 1.0, 0.1, 5.0)) == pytest.approx(
        one_hot + 0.1 * activation + 5.0 * entropy, rel=1e-6
    )
    l1 = (
        sum(
            abs(a - b)
            for x, y in zip(rows, s.tolist(), strict=True)
            for a, b in zip(x, y, strict=True)
        )
        / 20
    )
    assert float(g.disagreement(s, t, "l1")) == pytest.approx(l1, rel=1e-6)
    kl = (
        sum(
            sum(
                p * (math.log(p) - math.log(q)) for p, q in zip(softmax(x), softmax(y), strict=True)
            )
            for x, y in zip(rows, s.tolist(), strict=True)
        )
        / 5
    )
    assert float(g.disagreement(s, t, "kl")) == pytest.approx(kl, rel=1e-5)
    assert float(g.disagreement(t, t, "kl")) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="l1 or kl"):
        g.disagreement(s, t, "l2")
