"""Nothing lost, nothing silent, in the engine: a crash while a checkpoint is renamed, a
damaged checkpoint, a resume under other settings, and non-finite losses."""

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distill
from distill.errors import CheckpointError, NonFiniteLoss
from distill.training.checkpoint import latest_checkpoint, list_checkpoints


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


class Killed(Exception):
    pass


class KillAt(distill.Callback):
    """Stops the process's training at ``step`` as a SIGKILL would: no checkpoint there."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, distiller, step, logs):
        if step == self.step:
            raise Killed


def run(run_dir, steps, notes=None, kill_at=None, **settings):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    settings = {
        "lr": 0.05,
        "checkpoint_every": 2,
        "keep_checkpoints": 3,
        "progress": False,
        "select_metric": None,
        **settings,
    }
    log = notes.append if notes is not None else print
    callbacks = [KillAt(kill_at)] if kill_at else []
    distiller = distill.Distiller(
        student, run_dir=run_dir, log=log, callbacks=callbacks, **settings
    )
    return distiller, distiller.fit(data(), max_steps=steps, resume=True)


def flip_a_byte(path, offset=-20):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_checkpoint_left_mid_rename_is_not_listed_and_resume_continues(tmp_path):
    """SIGKILL between writing ``step_N.tmp`` and renaming it leaves the folder behind:
    it is not a checkpoint, and the rerun resumes from the last whole one."""
    run(tmp_path / "straight", 6)
    with pytest.raises(Killed):
        run(tmp_path / "killed", 6, kill_at=5)
    newest = latest_checkpoint(tmp_path / "killed")
    shutil.copytree(newest, newest.with_name("step_0000006.tmp"))  # as a crash leaves it
    assert list_checkpoints(tmp_path / "killed")[-1] == newest
    _, result = run(tmp_path / "killed", 6)
    assert result.steps == 6
    a = load_file(tmp_path / "straight" / "student.safetensors")
    b = load_file(tmp_path / "killed" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_checkpoint_is_passed_over_saying_so(tmp_path):
    run(tmp_path / "straight", 6)
    with pytest.raises(Killed):
        run(tmp_path / "damaged", 6, kill_at=5)
    newest = latest_checkpoint(tmp_path / "damaged")
    flip_a_byte(newest / "student.safetensors")
    notes = []
    run(tmp_path / "damaged", 6, notes)
    assert any("student.safetensors: differs from the checksum" in n for n in notes)
    assert any("resuming from" in n and "step_0000002" in n for n in notes)
    a = load_file(tmp_path / "straight" / "student.safetensors")
    b = load_file(tmp_path / "damaged" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the older checkpoint leads to the same

    for checkpoint in list_checkpoints(tmp_path / "damaged"):  # nothing intact any more
        flip_a_byte(checkpoint / "trainer_state.pt")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*trainer_state\.pt"):
        run(tmp_path / "damaged", 6, [])


def test_resuming_under_other_settings_is_refused_naming_them(tmp_path):
    run(tmp_path / "r", 4)
    with pytest.raises(CheckpointError, match=r"lr: 0\.05 -> 0\.5"):
        run(tmp_path / "r", 6, lr=0.5)


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    run_dir = tmp_path / "huge"
    distiller = distill.Distiller(
        student, run_dir=run_dir, lr=1e30, optimizer="sgd", checkpoint_every=1, progress=False
    )
    with pytest.raises(NonFiniteLoss, match=r"^step \d+: the (loss|gradient norm).* is (nan|inf)"):
        distiller.fit(data(), max_steps=20)
    last = latest_checkpoint(run_dir)
    assert last is not None  # the steps before stayed
    weights = load_file(last / "student.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_non_finite_loss_names_its_step_and_the_step_that_found_it():
    """Losses are read every ``log_every`` steps, so the progress bar stops there: the
    line names both, the step that went wrong and the one where it was seen."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def nan_from_step_3(student_logits, labels, calls=[0]):  # noqa: B006
        calls[0] += 1
        loss = nn.functional.cross_entropy(student_logits, labels)
        return loss * math.nan if calls[0] >= 3 else loss

    objective = distill.Objective(ce=distill.Term(nan_from_step_3))
    distiller = distill.Distiller(
        student, None, objective, lr=0.05, progress=False, log_every=5,
        select_metric=None,
    )  # fmt: skip
    with pytest.raises(NonFiniteLoss, match=r"^step 3: the loss .*\(found at step 5, where"):
        distiller.fit(data(), max_steps=20)


def test_skip_step_drops_the_update_and_goes_on():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def sometimes_nan(student_logits, labels):
        loss = nn.functional.cross_entropy(student_logits, labels)
        return loss * math.nan if labels.sum() % 2 else loss

    objective = distill.Objective(ce=distill.Term(sometimes_nan))
    distiller = distill.Distiller(
        student, None, objective, lr=0.05, progress=False, on_nonfinite="skip_step"
    )
    before = [p.detach().clone() for p in student.parameters()]
    result = distiller.fit(data(), max_steps=12)
    assert result.steps == 12
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
