"""`distill run` killed (SIGKILL) and run again with the same command continues where it
stopped and ends with the weights of an uninterrupted run, bit for bit; a run directory is
locked and tied to its recipe; damaged stores are verified, not trusted."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from distill import cli
from distill.recipes import load_recipe
from distill.runs.store import teacher_cache_dir

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "mnist1d_kd.yaml"
# checkpoints written, in order: teacher steps 2, 4, 6 and 6 again at the end (1-4),
# baseline 4, 8, 12, 12 (5-8), student 4, 8, 12, 12 (9-12)
TINY = [
    "teacher.train.max_steps=6",
    "teacher.train.checkpoint_every=2",
    "train.max_steps=12",
    "train.checkpoint_every=4",
    "output.latency_repeats=1",
]


def distill_run(run_dir, cache, *extra, kill=None, quiet=True):
    """`distill run` with the teacher store ``cache``: in this process (typer's runner),
    or, with ``kill=(where, n)``, in a subprocess that is SIGKILLed at checkpoint n (the
    process boundary is the point there). Returns (exit code, what went to stderr)."""
    args = ["run", str(RECIPE), *[f"--set={o}" for o in TINY], "--out", str(run_dir)]
    args += ["-q"] if quiet else []
    if kill is None:
        result = CliRunner().invoke(cli.app, [*args, *extra], env={"DISTILL_CACHE": str(cache)})
        return Done(result.exit_code, result.stderr)
    env = {**os.environ, "DISTILL_CACHE": str(cache)}
    command = [sys.executable, str(ROOT / "tests" / "kill_run.py"), *map(str, kill), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return Done(done.returncode, done.stderr)


@dataclasses.dataclass
class Done:
    returncode: int
    stderr: str


def weights(path):
    return load_file(path)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    done = distill_run(root / "run", root / "cache")
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.mark.e2e
@pytest.mark.parametrize(
    "kill",
    [("written", 2), ("written", 7), ("renaming", 10)],
    ids=["teacher-mid-training", "baseline-trained-not-measured", "student-rename-window"],
)
def test_a_killed_run_rerun_ends_bit_identical(kill, uninterrupted, tmp_path):
    killed = distill_run(tmp_path / "run", tmp_path / "cache", kill=kill)
    assert killed.returncode == -9  # SIGKILL
    if kill[0] == "renaming":
        left = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
        assert "step_0000008.tmp" in left
    again = distill_run(tmp_path / "run", tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("student.safetensors", "baseline/student.safetensors"):
        assert same(weights(uninterrupted / "run" / name), weights(tmp_path / "run" / name)), name
    recipe = load_recipe(RECIPE, TINY)
    for root in (uninterrupted, tmp_path):
        os.environ["DISTILL_CACHE"] = str(root / "cache")
        store = teacher_cache_dir(recipe)
        if root is uninterrupted:
            reference = weights(store / "teacher.safetensors")
        else:
            assert same(reference, weights(store / "teacher.safetensors"))
    del os.environ["DISTILL_CACHE"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    straight = json.loads((uninterrupted / "run" / "summary.json").read_text())
    for row in ("teacher", "baseline", "student"):
        assert summary["models"][row]["accuracy"] == straight["models"][row]["accuracy"]


@pytest.mark.e2e
def test_a_finished_run_rerun_reuses_every_student(uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "copy")
    rerun = distill_run(tmp_path / "copy" / "run", tmp_path / "copy" / "cache", quiet=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reused from the cache" in rerun.stderr
    assert rerun.stderr.count("finished by an earlier run, reused") == 2  # baseline, student


@pytest.mark.e2e
def test_a_run_directory_holds_one_recipe_and_restart_starts_over(uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "copy")
    run_dir, cache = tmp_path / "copy" / "run", tmp_path / "copy" / "cache"
    other = distill_run(run_dir, cache, "--set", "train.lr=0.01")
    assert other.returncode == 2
    assert "holds a run of another recipe (train.lr: 0.002 -> 0.01)" in other.stderr
    assert "--restart" in other.stderr and "Traceback" not in other.stderr
    restarted = distill_run(run_dir, cache, "--set", "train.lr=0.01", "--restart")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert not same(
        weights(uninterrupted / "run" / "student.safetensors"),
        weights(run_dir / "student.safetensors"),
    )


@pytest.mark.e2e
def test_a_run_directory_in_use_is_refused_at_once(tmp_path):
    """The second of two concurrent runs into one directory stops with one line."""
    from filelock import FileLock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with FileLock(str(run_dir / ".lock")):  # as a run in another process holds it
        result = CliRunner().invoke(
            cli.app, ["run", str(RECIPE), *[f"--set={o}" for o in TINY], "--out", str(run_dir)]
        )
    assert result.exit_code == 2
    assert "is in use by another distill run" in result.output


@pytest.mark.e2e
def test_a_second_run_waits_for_the_teacher_another_run_is_training(tmp_path, monkeypatch):
    """Two runs needing the same teacher: the second waits for the first's lock, then
    reuses the teacher it stored instead of training it alongside."""
    from filelock import FileLock

    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(RECIPE, TINY)
    store = teacher_cache_dir(recipe)
    store.mkdir(parents=True)
    lock = FileLock(str(store / ".lock"))
    lock.acquire()
    notes = []
    from distill.runs import run_recipe

    worker = threading.Thread(
        target=lambda: notes.append(
            run_recipe(recipe, out_dir=tmp_path / "second", progress=False, log=notes.append)
        )
    )
    worker.start()
    worker.join(timeout=3)
    assert worker.is_alive()  # waiting for the lock
    assert any("another run is training this teacher" in n for n in notes if isinstance(n, str))
    lock.release()
    worker.join(timeout=120)
    assert not worker.is_alive() and isinstance(notes[-1], dict)


@pytest.mark.e2e
def test_a_damaged_teacher_store_entry_is_trained_again_saying_so(uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "copy")
    cache = tmp_path / "copy" / "cache"
    os.environ["DISTILL_CACHE"] = str(cache)
    try:
        store = teacher_cache_dir(load_recipe(RECIPE, TINY))
    finally:
        del os.environ["DISTILL_CACHE"]
    raw = bytearray((store / "teacher.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (store / "teacher.safetensors").write_bytes(bytes(raw))
    again = distill_run(tmp_path / "other", cache, quiet=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "differs from the checksum" in again.stderr and "training it again" in again.stderr
    assert same(
        weights(uninterrupted / "run" / "student.safetensors"),
        weights(tmp_path / "other" / "student.safetensors"),
    )


@pytest.mark.e2e
def test_a_non_finite_loss_stops_the_run_with_one_line(tmp_path):
    result = distill_run(tmp_path / "run", tmp_path / "cache", "--set", "train.lr=1e30")
    assert result.returncode == 2
    assert "error: step" in result.stderr and "Traceback" not in result.stderr
    assert "train.lr" in result.stderr


@pytest.mark.e2e
def test_distill_cache_verifies_a_complete_cache_and_rebuilds_a_damaged_shard(tmp_path):
    args = [*[f"--set={o}" for o in TINY], "--set=cache={}", f"--set=output.dir={tmp_path}"]

    def build():
        env = {"DISTILL_CACHE": str(tmp_path / "weights")}
        return CliRunner().invoke(cli.app, ["cache", str(RECIPE), *args], env=env)

    first = build()
    assert first.exit_code == 0, first.output[-2000:]
    folder = tmp_path / "mnist1d_kd" / "teacher_outputs"
    shard = sorted(folder.glob("shard-00001.logits.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    again = build()
    assert again.exit_code == 0, again.output[-2000:]
    assert "shard(s) [1] differ from their checksums; rebuilding" in again.stderr
    assert "complete, reused" not in again.stderr and "wrote 1 shard(s)" in again.stderr
    assert "complete, reused" in build().stderr


@pytest.mark.e2e
def test_every_model_of_a_report_is_timed_back_to_back_with_its_spread(uninterrupted):
    summary = json.loads((uninterrupted / "run" / "summary.json").read_text())
    for row in ("teacher", "baseline", "student"):
        m = summary["models"][row]
        assert 0 < m["latency_p10_ms"] <= m["latency_ms"] <= m["latency_p90_ms"]
    report = (uninterrupted / "run" / "report.md").read_text()
    assert "timed back to back at the end of the run" in report
    assert "10th–90th percentile (ms): teacher" in report
