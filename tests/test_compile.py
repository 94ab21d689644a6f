"""``compile``: the student, the teacher and LM-head KD's chunks run through torch.compile
(here with the ``aot_eager`` backend: the same graphs and autograd split, no C compiler),
give the eager numbers, and a second epoch compiles nothing new."""

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

import distill
from distill import Objective, Term, losses, teachers
from distill.losses.tokens import lm_head_kd

from .models import mlp


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.e2e
def test_compiled_lm_head_chunks_match_eager_and_stop_compiling():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    s_w = torch.randn(50, 8, generator=g).requires_grad_()
    t_w = torch.randn(50, 12, generator=g)
    graphs = []
    for tokens in (40, 23, 31, 40, 17):  # chunks of 16: full ones and last ones of any size
        s_h = torch.randn(tokens, 8, generator=g).requires_grad_()
        t_h = torch.randn(tokens, 12, generator=g)
        labels = torch.randint(0, 50, (tokens,), generator=g)
        labels[::5] = -100
        results = []
        for compile in (False, "aot_eager"):
            value = lm_head_kd(
                s_h, s_w, t_h, t_w, divergence="jsd", temperature=2.0, labels=labels,
                ce_weight=0.3, chunk_size=16, compile=compile,
            )  # fmt: skip
            grads = torch.autograd.grad(value, (s_h, s_w))
            results.append((value, *grads))
        for eager, compiled in zip(*results, strict=True):
            torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
        graphs.append(compiled_graphs())
    assert graphs[0] >= 1
    # the full chunk compiles, the first other size compiles once more with a dynamic
    # token count, and no later size compiles anything
    assert graphs[2:] == [graphs[1]] * 3


@pytest.mark.e2e
def test_a_compiled_run_compiles_in_its_first_epoch_only(digits, tmp_path):
    torch._dynamo.reset()
    train = torch.utils.data.Subset(digits[0], range(300))  # batches of 64: the last has 44
    torch.manual_seed(0)
    teacher = mlp(64, 32, 10).eval()
    torch.manual_seed(1)
    student = mlp(64, 16, 10)
    names = list(student.state_dict())
    graphs = {}

    class CountPerEpoch(distill.Callback):
        def on_step_end(self, distiller, step, logs):
            if step % 5 == 0:
                graphs[step // 5] = compiled_graphs()

    objective = Objective(
        ce=Term(losses.cross_entropy, weight=0.5),
        kd=Term(losses.kl, weight=0.5, temperature=2.0),
        hint=Term(losses.hint, weight=0.1, student="2", teacher="2"),
    )
    run = distill.Distiller(
        student, teachers.Module(teacher), objective, compile=True, compile_backend="aot_eager",
        lr=1e-2, progress=False, select_metric=None, callbacks=[CountPerEpoch()],
        run_dir=tmp_path,
    )  # fmt: skip
    run.fit(DataLoader(train, batch_size=64, shuffle=True), epochs=3)
    assert graphs[1] > 0
    assert graphs[3] == graphs[2] == graphs[1]  # the last, smaller batch compiled in epoch 1
    assert list(student.state_dict()) == names  # checkpoints keep the model's own names
    reference = distill.Distiller(
        mlp(64, 16, 10), teachers.Module(teacher), objective, progress=False
    )  # the compiled student still learns: it beats chance on the training data
    reference.student.load_state_dict(student.state_dict())
    assert reference.evaluate(DataLoader(train, batch_size=100))["accuracy"] > 0.5
