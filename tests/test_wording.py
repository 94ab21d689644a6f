"""What a person reads: the run's verdict line, ranges, the student's name in the log and
the search's results, each worded for the case at hand."""

from __future__ import annotations

from distill.recipes import ModelSpec
from distill.runs.driver import student_name
from distill.runs.report.document import verdict
from distill.runs.report.tables import span
from distill.runs.search.report import final_value
from distill.runs.task import gap_closed


def summary(gain: float, closed: float) -> dict:
    models = {"teacher": {"accuracy": 0.9}, "baseline": {"accuracy": 0.6},
              "student": {"accuracy": 0.6 + gain}}  # fmt: skip
    return {"models": models, "gain_over_baseline": gain, "gap_closed": closed}


def test_a_loss_is_said_plainly_and_no_negative_share_of_the_gap_is_closed():
    lost = verdict(summary(-0.2377, -0.8))
    assert lost.startswith("Distillation loses 23.77 points against the label-only student")
    assert "closes" not in lost and "-80%" not in lost
    gained = verdict(summary(0.0552, 0.54))
    assert gained == (
        "Distillation gains 5.52 points over the label-only student and closes 54% of its "
        "gap to the teacher."
    )


def test_a_range_whose_ends_are_equal_is_one_number():
    assert span(5300, 5300) == "5,300"
    assert span(5299, 5300) == "5,299–5,300"
    assert span(0.0201, 0.0203, "{:.3f}") == "0.020"  # equal as shown


def test_a_student_cut_from_the_teacher_is_not_called_student_teacher():
    assert student_name(ModelSpec(model="teacher", args={"keep": 2})) == "(cut from the teacher)"
    assert student_name(ModelSpec(model="zoo:mlp")) == "zoo:mlp"


def test_search_results_show_accuracy_in_percent_and_a_spread_only_over_several_seeds():
    one = {"accuracy": 0.8382, "accuracy_std": 0.0, "loss": 0.45, "loss_std": 0.0, "seeds": [0]}
    assert final_value(one, "accuracy") == "83.82%"
    assert final_value(one, "loss") == "0.4500"
    three = {**one, "accuracy_std": 0.0041, "seeds": [0, 1, 2]}
    assert final_value(three, "accuracy") == "83.82 ± 0.41%"


def test_gap_closed_is_the_share_of_the_teacher_gap_that_distillation_closes():
    models = {
        "teacher": {"accuracy": 0.9},
        "baseline": {"accuracy": 0.8},
        "student": {"accuracy": 0.85},
    }
    assert abs(gap_closed(models) - 0.5) < 1e-12
    assert gap_closed({**models, "teacher": {"accuracy": 0.7}}) is None
    assert gap_closed({"student": {"accuracy": 0.8}}) is None
