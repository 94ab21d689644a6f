"""distill doctor: each check on a constructed case whose right verdict is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from distill import cli
from distill.doctor.checks import (
    calibration,
    capacity_gap_check,
    overconfidence_check,
    teacher_cost_check,
    temperature_check,
)
from distill.doctor.run import diagnose
from distill.doctor.shift import data_shift_check, domain_classifier_auc
from distill.recipes import RecipeError, load_recipe
from distill.runs import run_recipe


def calibrated_case(n=4000, classes=10, seed=0):
    """Logits and labels drawn so that the labels follow the teacher's own probabilities:
    calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, classes, generator=g)
    labels = torch.multinomial(F.softmax(logits, -1), 1, generator=g).squeeze(1)
    return logits, labels


def test_a_one_hot_teacher_is_flagged_overconfident_and_a_calibrated_one_is_not():
    logits, labels = calibrated_case()
    one_hot = 50.0 * F.one_hot(logits.argmax(-1), 10).float()
    flagged = overconfidence_check(one_hot, labels)
    assert flagged.verdict == "problem" and "near one-hot" in flagged.summary
    assert flagged.measurements["calibrating_temperature"] > 5
    fine = overconfidence_check(logits, labels)
    assert fine.verdict == "ok", fine.summary
    assert fine.measurements["ece"] < 0.03
    assert abs(fine.measurements["calibrating_temperature"] - 1) < 0.1
    # over-confident but not one-hot: the same logits sharpened 3x
    sharp = overconfidence_check(3 * logits, labels)
    assert sharp.verdict == "warning" and sharp.measurements["calibrating_temperature"] > 2


def test_calibration_bins_add_up():
    logits, labels = calibrated_case(n=500)
    stats = calibration(F.softmax(logits, -1), labels)
    assert sum(b["count"] for b in stats["diagram"]) == 500


def test_temperature_check_flags_soft_targets_that_are_the_labels_and_recommends_a_t():
    logits, _ = calibrated_case()
    sharp = temperature_check(30 * logits, temperature=1.0)  # a near one-hot teacher
    assert sharp.verdict == "problem"
    recommended = sharp.measurements["recommended"]
    assert recommended > 1
    share = sharp.measurements["by_temperature"][str(recommended)]["off_top_share"]
    assert 0.05 <= share <= 0.8
    assert temperature_check(30 * logits, temperature=recommended).verdict == "ok"
    assert temperature_check(logits, temperature=1.0).verdict == "ok"
    assert temperature_check(logits, temperature=20.0).verdict == "warning"


def mlp(width, depth=2, seed=0):
    torch.manual_seed(seed)
    layers, size = [], 16
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 10))


def test_a_tiny_student_facing_a_huge_teacher_is_flagged_and_a_capable_one_is_not():
    torch.manual_seed(0)
    inputs = torch.randn(512, 16)
    teacher = mlp(512, depth=3, seed=1)
    with torch.no_grad():
        logits = 4 * teacher(inputs)  # a sharp, intricate function of the inputs
    flagged = capacity_gap_check(teacher, mlp(1, depth=1), inputs, logits, steps=300)
    assert flagged.verdict == "problem" and "assistant" in flagged.suggestion
    fine = capacity_gap_check(teacher, mlp(256, depth=2), inputs, logits, steps=300)
    assert fine.verdict == "ok", fine.summary
    assert fine.measurements["agreement_after"] > flagged.measurements["agreement_after"]


def test_a_shifted_transfer_set_is_flagged_and_a_matching_one_is_not():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, 8, generator=g)
    teacher = nn.Linear(8, 10)
    with torch.no_grad():
        teacher.weight.copy_(centres)
        teacher.bias.copy_(-0.5 * centres.square().sum(1))

    def draw(classes, n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=gen)]
        return centres[y] + torch.randn(n, 8, generator=gen)

    with torch.no_grad():
        target = teacher(draw(list(range(10)), 1000, 1))
        same = teacher(draw(list(range(10)), 1000, 2))
        shifted = teacher(draw([0, 1, 2], 1000, 3))
    assert data_shift_check(same, target).verdict == "ok"
    flagged = data_shift_check(shifted, target)
    assert flagged.verdict == "problem"
    assert flagged.measurements["class_shift_tv"] > 0.5
    assert flagged.measurements["domain_auc"] > 0.75


def test_domain_classifier_auc_is_half_for_one_distribution_and_one_for_two():
    a, b = torch.randn(400, 5), torch.randn(400, 5)
    assert abs(domain_classifier_auc(a, b) - 0.5) < 0.1
    assert domain_classifier_auc(a, b + 4) > 0.99


def test_teacher_cost_flags_a_teacher_that_dwarfs_the_student():
    inputs = torch.randn(256, 16)
    big = mlp(2048, depth=3)
    long_run = {"steps_per_epoch": 100_000, "epochs": 3}
    flagged = teacher_cost_check(big, mlp(8, depth=1), inputs, **long_run)
    assert flagged.verdict == "warning" and "cache" in flagged.suggestion, flagged.summary
    m = flagged.measurements
    assert m["saving_seconds"] == m["cache_teacher_seconds"] * 2
    assert teacher_cost_check(mlp(8, depth=1), big, inputs, **long_run).verdict == "ok"
    # the same teacher for a handful of steps costs too little to matter
    short = teacher_cost_check(big, mlp(8, depth=1), inputs, steps_per_epoch=2, epochs=1)
    assert short.verdict == "ok"
    # inputs augmented or mixed anew every step: a cache cannot hold the answers
    mixed = teacher_cost_check(big, mlp(8, depth=1), inputs, **long_run, cacheable=False)
    assert mixed.verdict == "warning" and "distill cache" not in mixed.suggestion
    assert "autocast" in mixed.suggestion


ROOT = Path(__file__).parent.parent


@pytest.mark.e2e
def test_doctor_on_a_broken_recipe_finds_its_problems_and_the_report_shows_them(tmp_path, plots):
    """The shipped broken recipe on a small budget: the 2-unit student and the 3-class
    transfer set are flagged, the command exits 1, and a later run's report carries the
    doctor's section."""
    overrides = [
        "teacher.args={channels: [16, 32], hidden: 64}",
        "teacher.train.epochs=3",
        "train.epochs=1",
        f"output.dir={tmp_path}",
    ]
    args = ["doctor", str(ROOT / "recipes" / "doctor_broken.yaml"), "--sample", "600", "--json"]
    result = CliRunner().invoke(cli.app, [*args, *[f"--set={o}" for o in overrides]])
    assert result.exit_code == 1, result.output
    verdicts = {f["check"]: f["verdict"] for f in json.loads(result.stdout)["findings"]}
    assert verdicts["capacity_gap"] == "problem"
    assert verdicts["data_shift"] == "problem"
    run_dir = tmp_path / "doctor_broken"
    assert (run_dir / "doctor.md").read_text().startswith("## Doctor")
    assert (run_dir / "plots" / "doctor_checks.png").stat().st_size > 10_000

    recipe = load_recipe(ROOT / "recipes" / "doctor_broken.yaml", [*overrides, "baseline=false"])
    run_recipe(recipe, progress=False, log=lambda m: None)
    report = (run_dir / "report.md").read_text()
    assert "## Doctor" in report and "Capacity gap" in report
    assert "Doctor: problem" in (run_dir / "report.html").read_text()


def test_doctor_refuses_recipes_it_has_no_checks_for():
    recipe = load_recipe(ROOT / "recipes" / "fashion_mnist_progressive.yaml")
    with pytest.raises(
        RecipeError,
        match="checks classification, causal_lm, masked_lm, clip and self_supervised recipes",
    ):
        diagnose(recipe)


def test_the_temperature_sweep_trains_one_short_run_per_temperature(tmp_path, digits_idx_dir):
    """A short KD run at each temperature, scored on validation; the recipe's other
    terms keep their settings."""
    from distill.doctor.run import temperature_sweep
    from distill.runs.table import task_for

    recipe = load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=300", "teacher.train.max_steps=10",
         f"output.dir={tmp_path}", "output.latency_repeats=1"],
    )  # fmt: skip
    task = task_for(recipe)
    task.prepare(False, print)
    teacher, _ = task.teacher(False, print)
    sweep = temperature_sweep(task, recipe, teacher, temperatures=(1.0, 4.0), steps=5)
    assert set(sweep["val_accuracy"]) == {"1.0", "4.0"}
    accuracy = sweep["val_accuracy"]
    assert sweep["best"] == float(max(accuracy, key=accuracy.get)) and sweep["steps"] == 5


def test_members_taught_at_one_temperature_are_checked_against_each_other():
    """A member whose soft targets are the labels again is a problem; members whose
    softness differs more than threefold, a warning naming each one's best temperature."""
    from distill.doctor.members import member_temperature_check

    torch.manual_seed(0)
    soft = torch.randn(200, 10)
    found = member_temperature_check({"a": soft, "b": soft * 1.2}, 1.0)
    assert found.verdict == "ok"
    sharp = member_temperature_check({"a": soft, "b": soft * 40}, 1.0)
    assert sharp.verdict == "problem" and "b teach nearly the labels" in sharp.summary
    assert sharp.measurements["recommended"]["b"] > sharp.measurements["recommended"]["a"]
    apart = member_temperature_check({"a": soft * 0.5, "b": soft * 6}, 1.0)
    assert apart.verdict == "warning" and "fold apart" in apart.summary
