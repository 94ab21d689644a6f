"""Experiment tracking (train.log_with): TensorBoard's event files, read back, hold every
metrics row the engine wrote, once per step also across a resume; a tracker that is not
installed is a recipe error naming the field and the package."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

import distill
from distill import Objective, Term, losses, teachers
from distill.recipes import RecipeError, load_recipe
from distill.runs import run_recipe
from distill.schedules import Warmup
from distill.training import checkpoint as ckpt
from distill.training import tracking

from .models import mlp

ROOT = Path(__file__).parent.parent


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files in ``log_dir``; a step logged
    twice is an error."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    found: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step shown twice: {steps}"
        found[tag] = {e.step: e.value for e in events.Scalars(tag)}
    return found


def metrics_rows(run_dir: Path) -> dict[str, dict[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    table: dict[str, dict[int, float]] = {}
    for row in rows:
        for name, value in row.items():
            if name != "step":
                table.setdefault(name, {})[row["step"]] = value
    return table


def distiller(
    digits, run_dir: Path, log_with: tuple[str, ...] = ("tensorboard",)
) -> tuple[distill.Distiller, DataLoader, DataLoader]:
    train, test = digits
    torch.manual_seed(0)
    teacher = mlp(64, 32, 10)
    student = mlp(64, 8, 10)
    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.5),
        kd=Term(losses.kl, weight=Warmup(0.5, steps=4), temperature=2.0),
    )
    run = distill.Distiller(
        student, teachers.Module(teacher), objective, lr=1e-3, progress=False, log_every=2,
        eval_every=4, checkpoint_every=4, run_dir=run_dir, log_with=list(log_with),
        select_metric=None,
    )  # fmt: skip
    return run, DataLoader(train, batch_size=64, shuffle=True), DataLoader(test, batch_size=256)


def test_tensorboard_gets_every_metrics_row_at_its_step(digits, tmp_path):
    run, train, val = distiller(digits, tmp_path / "run")
    run.fit(train, val, max_steps=8)
    logged = scalars(tmp_path / "run" / "tracking")
    written = metrics_rows(tmp_path / "run")
    for name in ("loss", "loss/ce", "loss/kd", "weight/kd", "temperature/kd", "lr"):
        assert set(logged[name]) == {2, 4, 6, 8}, name
    assert set(logged["val/accuracy"]) == {4, 8}
    for name, by_step in logged.items():
        assert by_step == pytest.approx(written[name], rel=1e-6), name
    assert logged["weight/kd"][2] < logged["weight/kd"][8]  # the warm-up is visible


def test_a_resumed_run_shows_each_step_once(digits, tmp_path):
    run_dir = tmp_path / "run"
    run, train, val = distiller(digits, run_dir)
    run.fit(train, val, max_steps=8)
    last = ckpt.latest_checkpoint(run_dir)
    assert last is not None and last.name.endswith("8")
    for path in last.iterdir():  # as if the run had been killed after step 4's checkpoint
        path.unlink()
    last.rmdir()
    run, train, val = distiller(digits, run_dir)
    run.fit(train, val, max_steps=8, resume=True)
    logged = scalars(run_dir / "tracking")  # asserts no step twice
    assert set(logged["loss"]) == {2, 4, 6, 8}
    assert logged["loss"] == pytest.approx(metrics_rows(run_dir)["loss"], rel=1e-6)


def wandb_history(wandb_dir: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} from the history records of the one offline W&B run under
    ``wandb_dir``: its transaction log read record by record (a 7-byte header, then records
    of LevelDB's log format in 32 KiB blocks, each a protobuf ``Record``)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, position, pending, found = 32768, 7, b"", {}
    while position + 7 <= len(raw):
        room = block - position % block
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if room < 7 or (kind == 0 and length == 0):  # the rest of a block is padding
            position += room
            continue
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                row = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
                for key, value in row.items():
                    if not key.startswith("_"):
                        found.setdefault(key, {})[row["_step"]] = value
    return found


@pytest.mark.e2e
def test_wandb_offline_and_mlflow_get_every_metrics_row(digits, tmp_path, monkeypatch):
    """W&B (offline) and MLflow (a local SQLite store), read back with their own formats and
    client, hold each metrics row at its step."""
    pytest.importorskip("wandb")
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run, train, val = distiller(digits, tmp_path / "run", log_with=("wandb", "mlflow"))
    run.fit(train, val, max_steps=8)
    written = metrics_rows(tmp_path / "run")

    by_wandb = wandb_history(tmp_path)
    client = mlflow.tracking.MlflowClient()
    (logged,) = client.search_runs([client.get_experiment_by_name(tmp_path.name).experiment_id])
    assert logged.info.run_name == "run"
    for name in ("loss", "loss/ce", "loss/kd", "weight/kd", "temperature/kd", "lr"):
        assert set(by_wandb[name]) == {2, 4, 6, 8}, name
        history = client.get_metric_history(logged.info.run_id, name)
        assert {m.step: m.value for m in history} == pytest.approx(written[name], rel=1e-6), name
        assert by_wandb[name] == pytest.approx(written[name], rel=1e-6), name
    assert set(by_wandb["val/accuracy"]) == {4, 8}
    assert by_wandb["val/accuracy"] == pytest.approx(written["val/accuracy"], rel=1e-6)


@pytest.mark.e2e
def test_a_recipe_logs_each_lesson_to_tensorboard(digits_idx_dir, tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "fashion_mnist_kd.yaml",
        [f"data.path={digits_idx_dir}", "data.labeled=null", "teacher.train.max_steps=10",
         "train.epochs=null", "train.max_steps=4", "train.log_every=2", f"output.dir={tmp_path}",
         "output.latency_repeats=1", "train.log_with=[tensorboard]"],
    )  # fmt: skip
    run_recipe(recipe, progress=False, log=lambda m: None)
    run_dir = tmp_path / "fashion_mnist_kd"  # the distilled student's; the baseline's below
    for folder in (run_dir, run_dir / "baseline"):
        logged = scalars(folder / "tracking")
        assert set(logged["loss"]) == {2, 4}, folder
    assert "loss/kd" in scalars(run_dir / "tracking")
    assert "loss/kd" not in scalars(run_dir / "baseline" / "tracking")


def test_a_tracker_that_is_not_installed_is_a_recipe_error(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "aim" else real(name)
    )
    with pytest.raises(
        RecipeError, match=r"train.log_with: aim needs the aim package: pip install aim"
    ):
        load_recipe(ROOT / "recipes" / "fashion_mnist_kd.yaml", ["train.log_with=[aim]"])
    with pytest.raises(RecipeError, match=r"train.log_with"):
        load_recipe(ROOT / "recipes" / "fashion_mnist_kd.yaml", ["train.log_with=[neptune]"])
