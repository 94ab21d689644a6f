"""``task: self_supervised``: the probes judge features as they should, the network gives
the views a teacher and a student read, bad recipes are refused naming the field, and a
run learns from its moving average, then teaches a frozen-teacher student, end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from distill.errors import RecipeError
from distill.recipes import load_recipe
from distill.runs import run_recipe
from distill.runs.table import task_for
from distill.runs.tasks.selfsup.probe import knn_accuracy, linear_probe

RECIPE = Path(__file__).parents[1] / "recipes" / "fashion_mnist_dino.yaml"


def clusters(per_class: int = 50, classes: int = 3, spread: float = 0.1):
    centres = torch.eye(classes, 8) * 5
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), 8), labels


def test_knn_and_the_probe_read_separable_features_and_not_noise():
    train, train_labels = clusters()
    test, test_labels = clusters(10)
    assert knn_accuracy(train, train_labels, test, test_labels, k=5) == 1.0
    assert linear_probe(train, train_labels, test, test_labels, steps=50) == 1.0
    shuffled = train_labels[torch.randperm(len(train_labels))]
    assert knn_accuracy(train, shuffled, test, test_labels, k=5) < 0.7
    assert linear_probe(torch.randn(150, 8), shuffled, test, test_labels, steps=50) < 0.7


def tiny(digits_idx_dir, out: Path, *more: str):
    return load_recipe(
        RECIPE,
        [
            f"data.path={digits_idx_dir}",
            "data.batch_size=64",
            "data.probe={labels: [100, 0], steps: 30}",
            "data.views.local_views=2",
            "student.args={channels: [4, 8], hidden: 16}",
            "selfsup={method: dino, embed_dim: 16, hidden: 32, bottleneck: 8, out_dim: 32}",
            "train={max_steps: 30, lr: 0.003, select_metric: null}",
            "output.latency_repeats=2",
            f"output.dir={out}",
            *more,
        ],
    )


def test_the_network_gives_every_view_in_training_and_the_global_ones_in_eval(digits_idx_dir):
    recipe = tiny(
        digits_idx_dir, Path("unused"), "selfsup.method=byol", "objective={byol: {loss: byol}}"
    )
    task = task_for(recipe)
    data = task.prepare(False, lambda line: None)
    student = task.build_student(recipe.student, None)
    views = torch.stack([data.student_train[i]["views"] for i in range(3)])
    assert views.shape[:2] == (3, 4)  # 2 global + 2 local
    assert student.train()(views=views).shape == (4, 3, 32)  # through the predictor
    assert student.eval()(views=views).shape == (2, 3, 32)  # a teacher: the global views
    assert student(data.test[0][0][None]).shape == (1, 10)  # the classifier
    assert all(row[1] == -100 for row in [data.student_train.dataset[i] for i in range(5)])


def test_a_teacher_normalises_with_its_views_statistics_and_keeps_its_running_ones():
    from distill.runs.tasks.selfsup.models import batch_statistics

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    before = net[1].running_mean.clone()
    x = torch.randn(64, 3) * 5 + 10
    with torch.no_grad(), batch_statistics(net):
        out = net(x)
    assert out.mean(0).abs().max() < 1e-4  # the batch's own mean taken out
    assert torch.equal(net[1].running_mean, before) and not net[1].training
    assert net(x).mean(0).abs().max() > 1  # outside: the running statistics again


def test_the_doctor_tells_a_collapsed_teacher_from_a_healthy_one():
    from distill.runs.tasks.selfsup.doctor import byol_finding, dino_finding, spread_finding

    same = torch.ones(64, 16) + 1e-6 * torch.randn(64, 16)
    assert spread_finding(same).verdict == "problem"
    assert spread_finding(torch.randn(64, 16)).verdict == "ok"
    assert dino_finding(same, 0.04).verdict == "problem"  # centred away: uniform targets
    assert "lower selfsup.teacher_temperature" in dino_finding(same, 0.04).suggestion
    assert dino_finding(torch.randn(64, 32), 0.1).verdict == "ok"
    assert dino_finding(torch.randn(64, 32) * 100, 0.01).verdict == "warning"  # one-hot
    assert byol_finding(same).verdict == "problem"
    assert byol_finding(torch.randn(64, 16)).verdict == "ok"


def test_dinos_teacher_temperature_warms_up_linearly_then_stays():
    from distill.losses.selfsup import DINOCenter

    loss = DINOCenter(4, teacher_temperature=0.07, teacher_temperature_start=0.04, warmup_calls=3)
    seen = []
    for _ in range(5):
        seen.append(float(loss.temperature()))
        loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    assert seen == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07])
    assert "calls" in loss.state_dict()  # kept in checkpoints
    assert DINOCenter(4, teacher_temperature=0.07).temperature() == 0.07


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("cache={}", "`cache` does not combine with `task: self_supervised`: the teacher's"),
        ("selfsup.predictor=false", "selfsup.predictor: BYOL needs the student's predictor"),
        ("train.select_metric=accuracy", "train.select_metric: the features are judged after"),
        ("teacher=null", "objective terms ['dino'] read the teacher, but no teacher is set"),
        ("objective={kd: {loss: kl}}", "objective: selfsup.method dino trains with a term"),
        (
            "objective={dino: {loss: dino}, e: {loss: hint, student: encoder, teacher: encoder}}",
            "feature terms need a frozen teacher: a run directory",
        ),
        ("data.augment=true", "`data.augment` does not combine with `task: self_supervised`"),
        ("selfsup.warmup_epochs=2", "selfsup.warmup_epochs: the teacher temperature's warm-up"),
    ],
)
def test_bad_recipes_are_refused_naming_the_field(change, message):
    overrides = [change]
    if change.startswith("selfsup.predictor"):
        overrides = ["selfsup.method=byol", "objective={byol: {loss: byol}}", change]
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe(RECIPE, overrides)


def test_a_frozen_teacher_may_teach_the_encoders_features_on_the_views_both_read():
    from distill.runs.tasks.selfsup.models import on_shared_views

    frozen = ["teacher={model: runs/earlier}"]
    both = "{dino: {loss: dino}, e: {loss: cosine_embedding, student: encoder, teacher: encoder}}"
    assert set(load_recipe(RECIPE, [*frozen, f"objective={both}"]).objective) == {"dino", "e"}
    refusal = re.escape("objective.e: hint matches the two encoders' features")
    with pytest.raises(RecipeError, match=refusal):
        load_recipe(RECIPE, [*frozen, "objective={e: {loss: hint, student: fc, teacher: fc}}"])
    seen = []
    shared = on_shared_views(lambda student_features, teacher_features: seen.append(
        (student_features, teacher_features)) or torch.zeros(()))  # fmt: skip
    student, teacher = torch.arange(12.0).reshape(6, 2), torch.ones(4, 2)  # 3 views, 2 global
    shared(student, teacher)
    assert torch.equal(seen[0][0], student[:4])  # the student's global views, view by view


def test_views_that_do_not_fit_and_probes_asking_too_much_fail_before_training(
    digits_idx_dir, tmp_path
):
    for change, message in [
        ("data.views.local_scale=[0.001, 0.01]", "data.views.local_scale: its smallest crop"),
        ("data.probe.labels=[100000]", "data.probe.labels: \\[100000\\] asks for more labels"),
    ]:
        with pytest.raises(RecipeError, match=message):
            run_recipe(tiny(digits_idx_dir, tmp_path, change), progress=False, log=lambda s: None)
    assert not list(tmp_path.glob("*/student.safetensors"))


def test_the_summary_reads_as_probes_and_says_what_the_unlabelled_images_bought():
    from distill.runs.report.document import verdict
    from distill.runs.report.tables import terminal_table

    row = {"knn_accuracy": 0.8, "probe_2000": 0.85, "probe_all": 0.9, "head_accuracy": 0.1}
    base = {**row, "probe_2000": 0.82, "head_accuracy": 0.83}
    summary = {
        "task": "self_supervised",
        "models": {
            "baseline": {**base, "accuracy": 0.82, "parameters": 10},
            "student": {**row, "accuracy": 0.85, "parameters": 10},
        },
    }
    header, rows = terminal_table(summary)
    assert header[:4] == ["model", "k-NN", "probe 2000", "probe all"]
    assert rows[1][:3] == ["student, self-supervised", "80.00%", "85.00%"]
    text = verdict(summary)
    assert "a linear probe on 2000 labels reads 85.00%" in text
    assert "reads 82.00% (its own classifier 83.00%): +3.00 points" in text


@pytest.mark.e2e
def test_dino_from_scratch_then_a_frozen_teacher_teaches_a_smaller_student(
    digits_idx_dir, tmp_path
):
    first = tiny(digits_idx_dir, tmp_path, "export={}")
    summary = run_recipe(first, progress=False, log=lambda line: None)
    models = summary["models"]
    assert set(models) == {"baseline", "student", "ema_teacher", "export_onnx"}
    # the ONNX graph is the encoder with its first probe as the classifier, checked in
    # ONNX Runtime against PyTorch on the test split
    exported = models.pop("export_onnx")
    assert exported["agreement"] >= 0.999 and exported["max_abs_diff"] < 1e-3
    assert exported["accuracy"] == pytest.approx(models["student"]["probe_100"], abs=0.005)
    for row in models.values():
        for key in ("knn_accuracy", "probe_100", "probe_all", "head_accuracy"):
            assert 0.0 <= row[key] <= 1.0
        assert row["accuracy"] == row["probe_100"]
    # the baseline's own classifier learnt the labels; a self-supervised one never read them
    assert models["baseline"]["head_accuracy"] > 0.2
    assert models["student"]["head_accuracy"] < 0.3
    run_dir = tmp_path / first.name
    for folder in (run_dir, run_dir / "baseline"):  # what the report's feature picture draws
        drawn = json.loads((folder / "features_2d.json").read_text())
        assert len(drawn["xy"]) == len(drawn["labels"]) > 100 and len(drawn["xy"][0]) == 2
    from distill.runs.tasks.selfsup.report import epochs_of, figures, validations

    for folder in (run_dir, run_dir / "baseline"):  # k-NN and the probe after each epoch
        epochs = validations(folder / "metrics.jsonl")
        assert len(epochs) >= 2
        assert epochs_of(epochs) == sorted(set(epochs_of(epochs)))  # distinct, in order
        assert all(0 <= row["val/knn_accuracy"] <= 1 for row in epochs)
    drawn = figures(run_dir, summary)
    assert set(drawn) == {"epochs", "features"}
    assert all(path.stat().st_size > 10_000 for path, _ in drawn.values())
    task = task_for(first)
    task.prepare(False, lambda line: None)
    again = task.evaluate(task.load_student(run_dir))  # what was saved is what was measured
    assert again["knn_accuracy"] == models["student"]["knn_accuracy"]

    second = tiny(
        digits_idx_dir,
        tmp_path / "small",
        f"teacher={{model: {run_dir}}}",
        "student.args={channels: [2, 4], hidden: 8}",
        "baseline=false",
        "objective={dino: {loss: dino}, e: {loss: cosine_embedding, student: encoder, "
        "teacher: encoder}}",
    )
    from distill.doctor.run import diagnose

    checked = diagnose(second, tmp_path / "doctor", sample=64, progress=False, log=lambda s: None)
    found = {f["check"]: f for f in checked["findings"]}
    assert set(found) == {"feature_spread", "target_entropy"}
    assert found["feature_spread"]["measurements"]["spread"] > 0
    assert 0 <= found["target_entropy"]["measurements"]["entropy_share"] <= 1
    distilled = run_recipe(second, progress=False, log=lambda line: None)
    assert set(distilled["models"]) == {"teacher", "student"}
    teacher = distilled["models"]["teacher"]
    assert teacher["knn_accuracy"] == models["student"]["knn_accuracy"]  # the frozen encoder
    assert distilled["models"]["student"]["parameters"] < teacher["parameters"]
    logged = [json.loads(line) for line in (tmp_path / "small" / second.name / "metrics.jsonl")
              .read_text().splitlines()]  # fmt: skip
    assert any("loss/e" in row and row["loss/e"] > 0 for row in logged)  # the features' term
    written = json.loads((tmp_path / "small" / second.name / "summary.json").read_text())
    assert written["method"] == "dino"


@pytest.mark.e2e
def test_a_killed_self_supervised_run_rerun_ends_bit_identical(digits_idx_dir, tmp_path):
    """The moving-average teacher, DINO's centre and the views' random stream come back
    from the checkpoint: killed after its second checkpoint and rerun, the student's
    weights are those of an uninterrupted run, bit for bit."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = Path(__file__).parents[1]
    sets = [
        f"data.path={digits_idx_dir}",
        "data.batch_size=64",
        "data.views.local_views=2",
        "data.probe={labels: [100], steps: 10}",
        "student.args={channels: [4, 8], hidden: 16}",
        "selfsup={method: dino, embed_dim: 16, hidden: 32, bottleneck: 8, out_dim: 32, "
        "teacher_temperature_start: 0.04, warmup_epochs: 0.5}",  # its step count resumes too
        "train={max_steps: 12, checkpoint_every: 4, lr: 0.003, select_metric: null}",
        "baseline=false",
        "output.latency_repeats=1",
    ]

    def run(folder: Path, kill: int | None = None) -> int:
        args = ["run", str(RECIPE), *[f"--set={s}" for s in sets], "--out", str(folder), "-q"]
        script = ["-m", "distill"] if kill is None else [str(root / "tests" / "kill_run.py"),
                                                        "written", str(kill)]  # fmt: skip
        env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache")}
        done = subprocess.run([sys.executable, *script, *args], env=env, timeout=300)
        return done.returncode

    assert run(tmp_path / "straight") == 0
    assert run(tmp_path / "killed", kill=2) == -9
    assert run(tmp_path / "killed") == 0
    straight = load_file(tmp_path / "straight" / "student.safetensors")
    resumed = load_file(tmp_path / "killed" / "student.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def centre_of_half(rank: int, port: int, outputs: torch.Tensor, out: Path) -> None:
    """One of two processes: update a DINO centre with its half of the teacher outputs."""
    from distill.losses.selfsup import DINOCenter

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    centre = DINOCenter(outputs.shape[-1], momentum=0.5)
    centre.update([outputs[rank * 3 : rank * 3 + 3]])
    torch.save(centre.center, out / f"centre_{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.e2e
def test_dinos_centre_follows_the_batch_of_every_process(tmp_path):
    """Two processes, each with half of a batch, end with the centre one process computes
    from the whole batch (DINO all-reduces it)."""
    from distill.losses.selfsup import DINOCenter

    from .test_distributed import free_port

    outputs = torch.randn(6, 5)
    torch.multiprocessing.spawn(centre_of_half, args=(free_port(), outputs, tmp_path), nprocs=2)
    whole = DINOCenter(5, momentum=0.5)
    whole.update([outputs])
    for rank in range(2):
        centre = torch.load(tmp_path / f"centre_{rank}.pt", weights_only=True)
        assert torch.allclose(centre, whole.center)


@pytest.mark.e2e
def test_a_self_supervised_recipe_runs_under_accelerate_launch(digits_idx_dir, tmp_path):
    """`accelerate launch --num_processes 2 -m distill run` (gloo on this CPU): the label-only
    and the DINO student train in two processes (the classifier idles in feature learning,
    the heads in the baseline: DDP is told); one summary, one table, one report."""
    import os
    import subprocess
    import sys

    from .test_distributed import free_port

    recipe = tiny(digits_idx_dir, tmp_path)
    overrides = [
        f"data.path={digits_idx_dir}", "data.batch_size=64", "data.views.local_views=2",
        "data.probe={labels: [100, 0], steps: 30}", "student.args={channels: [4, 8], hidden: 16}",
        "selfsup={method: dino, embed_dim: 16, hidden: 32, bottleneck: 8, out_dim: 32}",
        "train={max_steps: 12, lr: 0.003, select_metric: null}",
        f"output.dir={tmp_path}", "output.latency_repeats=1",
    ]  # fmt: skip
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        f"--main_process_port={free_port()}", "-m", "distill", "run", str(RECIPE),
        *[f"--set={o}" for o in overrides],
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"distill: {recipe.name}") == 1  # the main process's table
    run_dir = tmp_path / recipe.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"baseline", "student", "ema_teacher"}
    assert summary["steps"] == 12
    for folder in (run_dir, run_dir / "baseline"):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        assert len(set(lines)) == len(lines)  # one process logged
    assert (run_dir / "report.md").exists()
