"""Two processes on this CPU (gloo, through torchrun and Accelerate) train exactly what one
process trains on the same global batch; only the main process writes; resuming works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "distributed_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *args: str, processes: int = 1) -> None:
    env = dict(os.environ)  # one thread per process (tests/conftest.py)
    if processes == 1:
        command = [sys.executable, str(SCRIPT), str(out), *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}",
            f"--master-port={free_port()}", str(SCRIPT), str(out), *args,
        ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "student.safetensors")


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def logged_losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    launch(root / "one", "--batch", "16", "--steps", "6")
    launch(root / "two", "--batch", "8", "--steps", "6", processes=2)
    return root


@pytest.mark.e2e
def test_two_processes_train_what_one_process_trains_on_the_same_global_batch(classifier_runs):
    one, two = classifier_runs / "one", classifier_runs / "two"
    assert max_difference(one, two) < 1e-6
    assert logged_losses(two) == pytest.approx(logged_losses(one), rel=1e-6)
    # the main process alone wrote: one metrics row per step, one set of checkpoints
    assert len(logged_losses(two)) == 6
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step_0000006"]


@pytest.mark.e2e
def test_token_level_kd_is_normalised_over_the_tokens_of_every_rank(tmp_path):
    """Rows with 1 to 16 counted tokens: each rank holds a different number of tokens, and
    the loss must average over all of them, not rank by rank."""
    launch(tmp_path / "one", "--task", "lm", "--batch", "8", "--steps", "6")
    launch(tmp_path / "two", "--task", "lm", "--batch", "4", "--steps", "6", processes=2)
    assert max_difference(tmp_path / "one", tmp_path / "two") < 1e-4
    assert logged_losses(tmp_path / "two") == pytest.approx(logged_losses(tmp_path / "one"))


@pytest.mark.e2e
def test_a_resumed_two_process_run_matches_an_uninterrupted_one(classifier_runs, tmp_path):
    launch(tmp_path / "run", "--batch", "8", "--steps", "3", processes=2)
    launch(tmp_path / "run", "--batch", "8", "--steps", "6", "--resume", processes=2)
    assert max_difference(tmp_path / "run", classifier_runs / "two") < 1e-6
    assert logged_losses(tmp_path / "run") == pytest.approx(logged_losses(classifier_runs / "two"))


@pytest.mark.e2e
def test_a_recipe_runs_under_accelerate_launch_and_only_the_main_process_writes(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m distill run RECIPE` (torchrun
    underneath; on this GPU-less machine the processes meet over gloo): teacher, label-only
    and distilled students train in two processes, each reading half of every epoch; one
    summary, one report, and no metrics row written twice."""
    overrides = [
        "teacher.train.epochs=1",
        "train.epochs=2",
        "train.log_every=1",
        f"output.dir={tmp_path}",
        "output.latency_repeats=2",
    ]
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        f"--main_process_port={free_port()}", "-m", "distill", "run",
        str(Path(__file__).parent.parent / "recipes" / "mnist1d_kd.yaml"), "--quiet",
        *[f"--set={o}" for o in overrides],
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "mnist1d_kd"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["models"]) == {"teacher", "baseline", "student"}
    # 3,960 transfer examples: 31 batches of 64 per process and epoch (62 in one process)
    assert summary["steps"] == 2 * 31
    assert summary["models"]["student"]["accuracy"] > 0.2  # chance: 0.1
    for metrics in (run_dir / "metrics.jsonl", run_dir / "baseline" / "metrics.jsonl"):
        lines = metrics.read_text().splitlines()
        assert len(set(lines)) == len(lines)  # no row twice: one process logged
        assert [json.loads(line)["step"] for line in lines][-1] == summary["steps"]
    assert (run_dir / "report.md").exists()
