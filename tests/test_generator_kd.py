"""Data-free distillation with a generator (``methods.generator``): the generator's shapes
and range, a round's effect on the generator, the student and the memory bank, and the
stored set it makes: resumed after a kill to the same inputs, checksummed, refused with
other settings."""

import pytest
import torch

from distill.errors import CacheError
from distill.methods.generator import GeneratorKD, GeneratorSettings, ImageGenerator
from distill.methods.synthetic import (
    GENERATOR_STATE,
    SyntheticSet,
    shard_name,
    write_synthetic_set,
)
from distill.models.small import MLP
from tests.test_inversion import trained_cnn


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 10, 6), (1, 40)])
def test_the_generator_makes_inputs_of_the_data_shape_within_their_range(shape):
    torch.manual_seed(0)
    generator = ImageGenerator(shape, 10, latent=8, width=4, input_range=(-1.0, 2.0))
    x = generator(torch.randn(5, 8), torch.arange(5))
    assert x.shape == (5, *shape)
    assert x.min() >= -1.0 and x.max() <= 2.0
    free = ImageGenerator(shape, 10, latent=8, width=4, conditional=False)
    y = free(torch.randn(64, 8))  # standardised per channel, as DAFL's last BatchNorm
    assert y.mean().abs() < 1e-4 and (y.var(unbiased=False) - 1).abs() < 1e-2
    with pytest.raises(ValueError, match="needs the classes"):
        generator(torch.randn(2, 8))


def test_a_round_moves_the_generator_and_the_student_and_fills_the_bank():
    teacher = trained_cnn()
    student = MLP(64, 10, hidden=16)
    settings = GeneratorSettings(latent=8, width=4, student_steps=3)
    rounds = GeneratorKD(teacher, student, (1, 8, 8), 10, settings, batch_size=16, seed=1)
    before = [p.detach().clone() for p in (*rounds.generator.parameters(), *student.parameters())]
    inputs, logits, terms = rounds.round()
    assert inputs.shape == (16, 1, 8, 8) and logits.shape == (16, 10)
    assert set(terms) == {"bn", "cls", "tv", "adversarial"}
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert terms["adversarial"] <= 0  # the disagreement, maximised
    after = [*rounds.generator.parameters(), *student.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not any(p.requires_grad for p in teacher.parameters())  # frozen, never stepped
    torch.testing.assert_close(teacher(inputs), logits)  # the bank holds the teacher's answer
    rounds.round()
    assert sum(len(b) for b in rounds.bank_inputs) == 32 and rounds.rounds == 2


def test_the_student_alongside_learns_the_teacher_on_generated_inputs():
    teacher = trained_cnn()
    torch.manual_seed(0)
    student = MLP(64, 10, hidden=32)
    settings = GeneratorSettings(latent=16, width=8, student_steps=5)
    rounds = GeneratorKD(teacher, student, (1, 8, 8), 10, settings, batch_size=32, seed=0)
    probe, probe_logits, _ = rounds.round()

    def gap() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.kl_div(
                student(probe).log_softmax(-1), probe_logits.softmax(-1), reduction="batchmean"
            ))  # fmt: skip

    first = gap()
    for _ in range(30):
        rounds.round()
    assert gap() < 0.5 * first


def generate(folder, notes, **changes):
    options = {"examples": 20, "shape": (1, 8, 8), "num_classes": 10, "teacher_id": "cnn-1",
               "batch_size": 8, "seed": 2, "progress": False,
               "settings": GeneratorSettings(latent=8, width=4, student_steps=2)}  # fmt: skip
    options.update(changes)
    torch.manual_seed(0)
    return write_synthetic_set(
        trained_cnn(), folder, student=MLP(64, 10, hidden=8), log=notes.append, **options
    )


def test_a_generated_set_is_stored_resumed_to_the_same_inputs_and_verified(tmp_path, monkeypatch):
    notes: list[str] = []
    whole = SyntheticSet(generate(tmp_path / "whole", notes))
    assert len(whole) == 20 and whole.provenance["method"] == "generator"
    assert whole.provenance["settings"]["adversarial_weight"] == 0.1
    assert (tmp_path / "whole" / GENERATOR_STATE).is_file()

    # killed in its third round: the rerun continues the generator where it was
    folder, made = tmp_path / "killed", 0
    original = GeneratorKD.round

    def killed_in_third_round(self):
        nonlocal made
        made += 1
        if made == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(GeneratorKD, "round", killed_in_third_round)
    with pytest.raises(KeyboardInterrupt):
        generate(folder, notes)
    monkeypatch.undo()
    assert not (folder / shard_name(2)).exists()
    generate(folder, notes)
    assert any("continues after round 2" in note for note in notes)
    resumed = SyntheticSet(folder)
    torch.testing.assert_close(resumed.inputs, whole.inputs)  # as if never killed

    # a damaged shard is named, then made again
    (folder / shard_name(1)).write_bytes(b"damaged")
    with pytest.raises(CacheError, match=f"{shard_name(1)} missing or damaged"):
        SyntheticSet(folder)
    notes.clear()
    generate(folder, notes)
    assert any("damaged" in note for note in notes)
    assert len(SyntheticSet(folder)) == 20
    # a damaged generator state: the generator starts again, the kept shards stay
    (folder / GENERATOR_STATE).write_bytes(b"damaged")
    (folder / shard_name(2)).unlink()
    notes.clear()
    generate(folder, notes)
    assert any("starts again" in note for note in notes)
    assert len(SyntheticSet(folder)) == 20
    with pytest.raises(CacheError, match="made with other settings"):
        generate(folder, notes, settings=GeneratorSettings(latent=8, width=4, student_steps=3))


def test_a_generator_needs_a_student():
    with pytest.raises(ValueError, match="pass student"):
        write_synthetic_set(
            trained_cnn(), "unused", examples=4, shape=(1, 8, 8), num_classes=10,
            teacher_id="t", settings=GeneratorSettings(), progress=False,
        )  # fmt: skip
