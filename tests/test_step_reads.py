"""The training step leaves its logged values on the device: they are read once per
logging window (one transfer), and the numbers logged are those a read per step gives."""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import distill
from distill import Objective, Term, losses, teachers

from .models import mlp


def _run(digits, run_dir, callbacks=(), **settings):
    train = torch.utils.data.Subset(digits[0], range(320))
    torch.manual_seed(0)
    teacher = mlp(64, 32, 10).eval()
    torch.manual_seed(1)
    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.5),
        kd=Term(losses.kl, weight=0.5, temperature=2.0),
        hint=Term(losses.hint, weight=0.1, student="2", teacher="2"),
    )
    settings = {"lr": 1e-2, "progress": False, "select_metric": None, **settings}
    run = distill.Distiller(
        mlp(64, 16, 10), teachers.Module(teacher), objective, run_dir=run_dir,
        callbacks=callbacks, **settings,
    )  # fmt: skip
    run.fit(DataLoader(train, batch_size=32, shuffle=True), epochs=2)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


class ReadEveryStep(distill.Callback):
    """Reads each step's loss at once, as the engine did before it kept them on the device."""

    def __init__(self):
        self.losses = []

    def on_step_end(self, distiller, step, logs):
        assert not logs.is_read
        self.losses.append(logs["loss"])


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "samples_per_s"} for row in rows]


def test_reading_the_steps_late_logs_the_numbers_a_read_per_step_gives(digits, tmp_path):
    late = _run(digits, tmp_path / "late", log_every=4, grad_accum_steps=2, max_grad_norm=1.0)
    eager = ReadEveryStep()
    each = _run(digits, tmp_path / "each", [eager], log_every=4, grad_accum_steps=2,
                max_grad_norm=1.0)  # fmt: skip
    assert _without_timing(late) == _without_timing(each)
    assert len(eager.losses) == 10 and all(isinstance(v, float) for v in eager.losses)
    # a window's row is the mean of its steps, to the last bit
    one = _run(digits, tmp_path / "one", log_every=1, grad_accum_steps=2, max_grad_norm=1.0)
    assert [r["loss"] for r in one[:4]] == eager.losses[:4]
    assert late[0]["loss"] == sum(eager.losses[:4]) / 4
    assert set(late[0]) >= {"loss/ce", "loss/kd", "loss/hint", "grad_norm", "lr", "samples_per_s"}
    assert late[0]["samples_per_s"] > 0


def test_the_host_waits_for_the_device_once_per_logging_window(digits, tmp_path, monkeypatch):
    """Counts the tensor reads distill's own code makes (PyTorch's AdamW reads its step
    counter, which it keeps on the CPU even when training on a GPU: no wait)."""
    reads = {"count": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            reads["count"] += "distill" in Path(caller).parts
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    class CountFromTheFirstStep(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            if step == 1:
                reads["count"] = 0  # what setup read is not the steps' business

    # 20 steps in windows of 10: two reads (before: one per step and term, and per count)
    _run(digits, tmp_path, [CountFromTheFirstStep()], log_every=10)
    assert reads["count"] <= 2
