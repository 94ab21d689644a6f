import math

import pytest
import torch

from distill import LossInputs, Objective, Term, losses, schedules


def inputs(n=8, c=5):
    torch.manual_seed(0)
    return LossInputs(
        student_logits=torch.randn(n, c),
        teacher_logits=torch.randn(n, c),
        labels=torch.randint(0, c, (n,)),
        student_features={"s": torch.randn(n, 4)},
        teacher_features={"t": torch.randn(n, 6)},
    )


def test_objective_sums_weighted_terms_and_reports_each():
    batch = inputs()
    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.1),
        kd=Term(losses.kl, weight=0.9, temperature=4.0),
        rkd=Term(losses.rkd_distance, weight=25.0, student="s", teacher="t"),
    )
    value = objective(batch)
    ce = losses.cross_entropy(batch.student_logits, batch.labels)
    kd = losses.kl(batch.student_logits, batch.teacher_logits, temperature=4.0)
    rkd = losses.rkd_distance(batch.student_features["s"], batch.teacher_features["t"])
    torch.testing.assert_close(value.total, 0.1 * ce + 0.9 * kd + 25.0 * rkd)
    torch.testing.assert_close(value.terms["kd"], kd)
    assert value.weights == {"ce": 0.1, "kd": 0.9, "rkd": 25.0}
    assert value.temperatures == {"kd": 4.0}
    assert objective.student_taps == ["s"] and objective.teacher_taps == ["t"]


def test_hint_builds_a_projector_from_the_first_batch():
    batch = inputs()
    objective = Objective(hint=Term(losses.hint, student="s", teacher="t"))
    with pytest.raises(ValueError, match="projector"):
        objective(batch)  # not built yet: shapes differ
    objective.build(batch)
    assert isinstance(objective.projectors["hint"], torch.nn.Linear)
    value = objective(batch)
    value.total.backward()
    assert objective.projectors["hint"].weight.grad is not None


def test_schedules():
    assert schedules.Constant(2.0)(5, 10) == 2.0
    assert schedules.Linear(0.0, 1.0)(5, 10) == 0.5
    assert schedules.Linear(0.0, 1.0, steps=4)(8, 10) == 1.0
    assert math.isclose(schedules.Cosine(1.0, 0.0)(5, 10), 0.5)
    assert schedules.Cosine(1.0, 0.0)(0, 10) == 1.0
    assert schedules.Warmup(8.0, steps=4)(1, 100) == 2.0
    assert schedules.Warmup(8.0, steps=4)(50, 100) == 8.0


def test_scheduled_weight_and_temperature_follow_the_step():
    batch = inputs()
    objective = Objective(
        kd=Term(
            losses.kl,
            weight=schedules.Warmup(1.0, steps=10),
            temperature=schedules.Linear(1.0, 3.0),
        )
    )
    early = objective(batch, step=0, total_steps=10)
    late = objective(batch, step=5, total_steps=10)
    assert early.weights["kd"] == 0.0 and late.weights["kd"] == 0.5
    assert late.temperatures["kd"] == 2.0
    torch.testing.assert_close(
        late.total, 0.5 * losses.kl(batch.student_logits, batch.teacher_logits, temperature=2.0)
    )


def test_dkd_term_reads_labels():
    batch = inputs()
    value = Objective(dkd=Term(losses.dkd, temperature=4.0, nckd_weight=2.0))(batch)
    expected = losses.dkd(
        batch.student_logits, batch.teacher_logits, batch.labels, temperature=4.0, nckd_weight=2.0
    )
    torch.testing.assert_close(value.total, expected)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Term(losses.kl, beta=0.5), "unknown option"),
        (lambda: Term(losses.cross_entropy, temperature=2.0), "no temperature"),
        (lambda: Term(losses.hint, teacher="t"), "student="),
        (lambda: Term(losses.kl, student="s"), "reads no features"),
        (lambda: Term(lambda student_logits, scale: student_logits.sum()), "required"),
    ],
)
def test_bad_terms_are_clear_errors(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_missing_input_is_named():
    batch = inputs()
    batch.labels = None
    with pytest.raises(ValueError, match="labels"):
        Objective(ce=Term(losses.cross_entropy))(batch)
