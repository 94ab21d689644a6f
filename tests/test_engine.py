"""The engine end to end on real digits data: KD works, resume is exact, accumulation is
normalised, Ctrl-C checkpoints, outputs are safetensors, errors are clear."""

import copy
import json
import signal

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

import distill
from distill import Objective, Term, losses, teachers
from distill.training.checkpoint import latest_checkpoint

from .models import TinyResNet, mlp


@pytest.fixture(scope="module")
def teacher_model(digits):
    """A small CNN teacher (about 98% test accuracy) trained on the digits training split."""
    train, _ = digits
    torch.manual_seed(0)
    model = TinyResNet(width=8)
    distill.Distiller(model, lr=5e-3, progress=False, select_metric=None).fit(
        DataLoader(train, batch_size=64, shuffle=True), epochs=6
    )
    return model.eval()


def loaders(digits, batch_size=64, shuffle=True):
    train, test = digits
    fit, val = distill.train_val_split(train, val_fraction=0.2, seed=0)
    return (
        DataLoader(fit, batch_size=batch_size, shuffle=shuffle),
        DataLoader(val, batch_size=256),
        DataLoader(test, batch_size=256),
    )


def test_teacher_learns(teacher_model, digits):
    _, _, test = loaders(digits)
    metrics = distill.Distiller(teacher_model, progress=False).evaluate(test)
    assert metrics["accuracy"] > 0.95


def test_kd_student_is_closer_to_the_teacher_than_a_label_only_student(teacher_model, digits):
    # Same seed, data order and budget; only the objective differs. Measured on seeds 1-4:
    # KL(KD) / KL(labels) = 0.87-0.92 on the test split.
    train, _, test = loaders(digits)
    results = {}
    for name, objective in {
        "labels": Objective(ce=Term(losses.cross_entropy)),
        "kd": Objective(
            ce=Term(losses.cross_entropy, weight=0.5),
            kd=Term(losses.kl, weight=0.5, temperature=2.0),
        ),
    }.items():
        torch.manual_seed(1)
        run = distill.Distiller(
            mlp(64, 16, 10),
            teachers.Module(teacher_model),
            objective,
            lr=5e-3,
            progress=False,
            seed=1,
            select_metric=None,
        )
        run.fit(train, epochs=10)
        results[name] = run.evaluate(test)
    assert results["kd"]["kl_to_teacher"] < 0.95 * results["labels"]["kl_to_teacher"]
    assert results["kd"]["accuracy"] > 0.8


def test_teacher_never_trains(teacher_model, digits):
    train, _, _ = loaders(digits)
    before = {k: v.clone() for k, v in teacher_model.state_dict().items()}
    student = TinyResNet(width=4)
    objective = Objective(
        kd=Term(losses.kl, temperature=2.0),
        at=Term(losses.attention_transfer, weight=100.0, student="layer2", teacher="layer2"),
    )
    distill.Distiller(student, teachers.Module(teacher_model), objective, progress=False).fit(
        train, max_steps=3
    )
    for k, v in teacher_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher_model.parameters())


class SendCtrlC(distill.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, distiller, step, logs):
        if step == self.at_step:
            signal.raise_signal(signal.SIGINT)


def _resumable_run(teacher_model, run_dir, callbacks=()):
    torch.manual_seed(2)
    student = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 10)
    )
    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.5),
        kd=Term(losses.kl, weight=0.5, temperature=4.0),
        # (N, 24) student features -> (N, 32) teacher features: a Linear projector
        hint=Term(losses.hint, weight=0.1, student="2", teacher="fc:input"),
    )
    return distill.Distiller(
        student,
        teachers.Module(teacher_model),
        objective,
        lr=2e-3,
        seed=3,
        run_dir=run_dir,
        checkpoint_every=4,
        progress=False,
        log_every=2,
        callbacks=callbacks,
    )


def test_ctrl_c_checkpoints_and_resume_is_bit_identical(teacher_model, digits, tmp_path):
    train, val, _ = loaders(digits)
    full = _resumable_run(teacher_model, tmp_path / "full")
    full.fit(train, val, epochs=2)

    first = _resumable_run(teacher_model, tmp_path / "cut", callbacks=[SendCtrlC(at_step=7)])
    with pytest.raises(KeyboardInterrupt, match="checkpoint at"):
        first.fit(train, val, epochs=2)
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000007"

    second = _resumable_run(teacher_model, tmp_path / "cut")
    result = second.fit(train, val, epochs=2, resume=True)

    assert result.steps == 2 * len(train)
    for (name, a), (_, b) in zip(
        full.student.state_dict().items(), second.student.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(
        full.objective.projectors["hint"].weight, second.objective.projectors["hint"].weight
    )
    full_rows = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    cut_rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in full_rows] == [json.loads(r)["step"] for r in cut_rows]
    assert [json.loads(r).get("val/accuracy") for r in full_rows] == [
        json.loads(r).get("val/accuracy") for r in cut_rows
    ]


class TinyLM(nn.Module):
    def __init__(self, vocab=13, width=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids):
        return self.head(torch.tanh(self.embed(input_ids)))


def token_dataset(n=32, length=16, vocab=13, mask_all=False):
    """Sequences whose number of labelled tokens grows with the index: the micro-batches of
    one accumulation window count very different numbers of tokens. ``mask_all``: every
    token under the mask (a distillation term counts them all, cross-entropy the labelled)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g)
        labels = torch.randint(0, vocab, (length,), generator=g)
        labels[1 + i * (length - 1) // n :] = -100
        mask = torch.ones(length, dtype=torch.bool) if mask_all else labels != -100
        rows.append({"input_ids": ids, "labels": labels, "loss_mask": mask})
    return rows


@pytest.mark.parametrize("case", ["classification", "tokens", "mixed_rows"])
def test_gradient_accumulation_1x32_equals_4x8(case, digits, teacher_model):
    """``mixed_rows``: terms that average over different rows (cross-entropy and a
    DistilBERT-style KL on the labelled tokens, a KL on every token) each weigh by their own."""
    if case == "classification":
        data = torch.utils.data.Subset(digits[0], range(64))
        make = lambda: mlp(64, 16, 10)  # noqa: E731
        teacher = teachers.Module(teacher_model)
    else:
        data = token_dataset(mask_all=case == "mixed_rows")
        make = TinyLM
        torch.manual_seed(9)
        teacher = teachers.Module(TinyLM())
    terms = {"ce": Term(losses.cross_entropy, weight=0.3),
             "kd": Term(losses.kl, weight=0.7, temperature=2.0)}  # fmt: skip
    if case == "mixed_rows":
        terms["kd"] = Term(losses.kl, weight=0.7, temperature=2.0, rows="labelled")
        terms["kd_all"] = Term(losses.kl, weight=0.5)
    objective = lambda: Objective(dict(terms))  # noqa: E731
    updated = {}
    for batch_size, accumulation in [(32, 1), (8, 4)]:
        torch.manual_seed(4)
        student = make()
        run = distill.Distiller(
            student,
            teacher,
            objective(),
            optimizer="sgd",
            momentum=0.0,
            lr=0.5,
            grad_accum_steps=accumulation,
            progress=False,
            select_metric=None,
        )
        run.fit(DataLoader(data, batch_size=batch_size, shuffle=True), max_steps=1)
        updated[accumulation] = student.state_dict()
    torch.manual_seed(4)
    initial = make().state_dict()
    for name, value in updated[1].items():
        assert not torch.equal(value, initial[name])  # the step did change the weights
        torch.testing.assert_close(updated[4][name], value, atol=1e-6, rtol=1e-5)


def test_bf16_mixed_precision_trains_on_cpu(digits, teacher_model):
    train, _, _ = loaders(digits)
    student = mlp(64, 32, 10)
    result = distill.Distiller(
        student,
        teachers.Module(teacher_model, autocast_dtype=torch.bfloat16),
        mixed_precision="bf16",
        cpu=True,
        progress=False,
        max_grad_norm=1.0,
        log_every=1,
    ).fit(train, max_steps=5)
    assert result.steps == 5
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert student[1].weight.dtype == torch.float32  # master weights stay in float32


def test_run_directory_contents_and_model_selection(digits, teacher_model, tmp_path):
    train, val, _ = loaders(digits)
    torch.manual_seed(5)
    student = TinyResNet(width=4)
    objective = Objective(
        kd=Term(losses.kl, temperature=4.0),
        fitnet=Term(losses.hint, weight=1.0, student="layer3", teacher="layer3"),
    )
    run = distill.Distiller(
        student,
        teachers.Module(teacher_model),
        objective,
        run_dir=tmp_path,
        lr=3e-3,
        checkpoint_every=10,
        keep_checkpoints=2,
        progress=False,
        log_every=5,
    )
    result = run.fit(train, val, epochs=2)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # 18 steps per epoch: checkpoints at 10, 20, 30 and the end (36); the last two are kept
    assert checkpoints == ["step_0000030", "step_0000036"]
    last = tmp_path / "checkpoints" / "step_0000036"
    assert {p.name for p in last.iterdir()} == {
        "student.safetensors",
        "projectors.safetensors",
        "trainer_state.pt",
        "state.json",
        "checksums.json",
    }
    trainer = torch.load(last / "trainer_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng"} <= set(trainer)
    assert "fitnet.conv.weight" in load_file(last / "projectors.safetensors")
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 36 and state["epoch"] == 2

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert {"loss/kd", "loss/fitnet", "weight/kd", "temperature/kd", "lr", "samples_per_s"} <= set(
        train_rows[0]
    )
    val_rows = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val_rows] == [18, 36]
    best = max(val_rows, key=lambda r: r["val/accuracy"])
    assert result.best_step == best["step"] and result.best_metric == best["val/accuracy"]
    # the returned student is the best one on validation, and is what was saved
    saved = load_file(tmp_path / "student.safetensors")
    best_saved = load_file(tmp_path / "best" / "student.safetensors")
    for name, value in student.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(saved[name], value) and torch.equal(best_saved[name], value)
    assert run.evaluate(val)["accuracy"] == pytest.approx(best["val/accuracy"])


def test_lr_schedule_warms_up_then_decays(digits):
    train, _, _ = loaders(digits)
    lrs = []

    class Record(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            lrs.append(logs["lr"])

    distill.Distiller(
        mlp(64, 8, 10),
        lr=0.1,
        warmup_steps=3,
        lr_schedule="cosine",
        progress=False,
        callbacks=[Record()],
    ).fit(train, max_steps=10)
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert lrs[3] > lrs[6] > lrs[9] > 0.0

    lrs.clear()
    steps_per_epoch = len(train)  # 18 batches
    distill.Distiller(
        mlp(64, 8, 10),
        lr=0.1,
        lr_schedule="multistep",
        lr_milestones=[1, 1.5],
        progress=False,
        callbacks=[Record()],
    ).fit(train, epochs=2)
    assert lrs[steps_per_epoch - 1] == pytest.approx(0.1)
    assert lrs[steps_per_epoch] == pytest.approx(0.01)
    assert lrs[27] == pytest.approx(0.001)


def test_bad_settings_and_inputs_are_clear_errors(digits, teacher_model):
    with pytest.raises(ValidationError, match="mixed_precision"):
        distill.Distiller(mlp(64, 8, 10), mixed_precision="fp8")
    with pytest.raises(ValidationError, match="lr"):
        distill.Distiller(mlp(64, 8, 10), lr=-1.0)
    with pytest.raises(ValidationError, match="extra"):
        distill.Distiller(mlp(64, 8, 10), learning_rate=1e-3)
    with pytest.raises(ValueError, match="teacher=None"):
        distill.Distiller(mlp(64, 8, 10), objective=Objective(kd=Term(losses.kl)))
    with pytest.raises(distill.TapError, match="layer3"):
        distill.Distiller(
            TinyResNet(),
            teachers.Module(teacher_model),
            Objective(h=Term(losses.hint, student="layer_3", teacher="layer3")),
        )
    train, _, _ = loaders(digits)
    run = distill.Distiller(
        mlp(64, 8, 10), teachers.Module(teacher_model), select_metric="bleu", progress=False
    )
    with pytest.raises(ValueError, match="select_metric"):
        run.fit(
            train,
            train,
            max_steps=2,
        )
    with pytest.raises(ValueError, match="epochs= or max_steps="):
        run.fit(train)


def test_teacher_agreement_counts_rows_where_the_top_classes_match():
    x = torch.randn(40, 6)
    teacher_model = nn.Linear(6, 3)
    constant = nn.Linear(6, 3)
    constant.weight.data.zero_()
    constant.bias.data = torch.tensor([0.0, 1.0, 0.0])  # always predicts class 1
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long)), batch_size=16
    )
    same = distill.Distiller(
        copy.deepcopy(teacher_model), teachers.Module(teacher_model), progress=False
    )
    assert same.evaluate(data)["teacher_agreement"] == 1.0
    metrics = distill.Distiller(constant, teachers.Module(teacher_model), progress=False).evaluate(
        data
    )
    expected = float((teacher_model(x).argmax(-1) == 1).float().mean())
    assert metrics["teacher_agreement"] == pytest.approx(expected)


def test_a_batch_without_labels_still_teaches_through_its_kd_term():
    """Transfer-set batches can hold no labelled row; their KD term must still train."""
    teacher_model = nn.Linear(6, 3)
    x = torch.randn(8, 6)
    hidden = torch.full((8,), -100)
    data = DataLoader(torch.utils.data.TensorDataset(x, hidden), batch_size=8)
    for objective, moves in (
        (Objective(ce=Term(losses.cross_entropy), kd=Term(losses.kl)), True),
        (Objective(ce=Term(losses.cross_entropy)), False),
    ):
        student = nn.Linear(6, 3)
        before = student.weight.detach().clone()
        distill.Distiller(
            student, teachers.Module(teacher_model), objective, lr=0.1, progress=False,
            select_metric=None,
        ).fit(data, max_steps=1)  # fmt: skip
        assert (not torch.equal(before, student.weight)) == moves


def test_step_clock_notes_every_step(teacher_model, digits):
    from distill.training import StepClock

    clock = StepClock()
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    distill.Distiller(
        student, distill.teachers.Module(teacher_model), callbacks=[clock], progress=False, cpu=True
    ).fit(DataLoader(digits[0], batch_size=64), max_steps=4)
    assert len(clock.times) == 4 and clock.times == sorted(clock.times)
    assert clock.seconds_per_step() > 0
