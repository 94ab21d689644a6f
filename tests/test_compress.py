"""Compression with distillation: low-rank factorization, pruning, quantization, export."""

import re

import pytest
import torch
from torch import nn

from distill.compress.lowrank import factorize, factorize_layer, rank_for_energy
from distill.errors import CheckpointError

from .test_damaged_runs import damage


def test_full_rank_factorization_reproduces_linear_and_conv_layers():
    torch.manual_seed(0)
    for layer, x in [
        (nn.Linear(12, 7), torch.randn(5, 12)),
        (nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)),
        (nn.Conv1d(4, 5, 5, padding=2, bias=False), torch.randn(2, 4, 20)),
    ]:
        full = min(layer.weight.shape[0], layer.weight[0].numel())
        torch.testing.assert_close(factorize_layer(layer, full)(x), layer(x), atol=1e-5, rtol=1e-5)


def test_truncated_factors_are_the_best_rank_r_approximation():
    torch.manual_seed(0)
    layer = nn.Linear(20, 16, bias=False)
    two = factorize_layer(layer, 4)
    product = two[1].weight @ two[0].weight
    s = torch.linalg.svdvals(layer.weight.detach())
    error = torch.linalg.matrix_norm(product - layer.weight.detach())  # Frobenius
    torch.testing.assert_close(error, s[4:].pow(2).sum().sqrt(), atol=1e-5, rtol=1e-4)


def test_rank_for_energy_and_factorize_replace_only_layers_that_shrink():
    assert rank_for_energy(torch.tensor([3.0, 2.0, 1.0]), 9 / 14) == 1
    assert rank_for_energy(torch.tensor([3.0, 2.0, 1.0]), 0.92) == 2
    assert rank_for_energy(torch.tensor([3.0, 2.0, 1.0]), 1.0) == 3
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(4, 256)
    before = model(x)
    changed = factorize(model, rank=32, skip=("2",))
    assert [c.path for c in changed] == ["0"] and changed[0].rank == 32
    assert changed[0].parameters_after == 32 * 256 + 256 * 32 + 256
    assert isinstance(model[0], nn.Sequential) and isinstance(model[2], nn.Linear)
    assert model(x).shape == before.shape
    assert factorize(nn.Sequential(nn.Linear(64, 64)), rank=60) == []  # would not shrink
    with pytest.raises(ValueError, match="exactly one of rank= or energy="):
        factorize(model)


def test_global_magnitude_pruning_reaches_the_asked_sparsity_and_keeps_the_largest():
    from distill.compress.prune import magnitude_prune, make_permanent, nonzero_parameters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5))
    weights = torch.cat([model[0].weight.detach().flatten(), model[2].weight.detach().flatten()])
    reached = magnitude_prune(model, 0.6)
    assert reached == pytest.approx(0.6, abs=1 / weights.numel())
    assert magnitude_prune(model, 0.8) == pytest.approx(0.8, abs=1 / weights.numel())
    make_permanent(model)
    assert {n for n, _ in model.named_parameters()} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    kept = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()])
    threshold = weights.abs().sort().values[round(0.8 * weights.numel())]
    assert bool((kept[kept != 0].abs() >= threshold - 1e-7).all())  # global: largest |w| stay
    assert nonzero_parameters(model) == int((kept != 0).sum()) + 40 + 5


def test_gradual_pruning_follows_the_cubic_schedule_during_distillation(digits):
    from torch.utils.data import DataLoader

    import distill
    from distill import losses, teachers
    from distill.compress.prune import cubic_sparsity, sparsity
    from distill.methods.pruning import GradualPruning

    assert cubic_sparsity(0, 100, 0.9) == 0 and cubic_sparsity(100, 100, 0.9) == 0.9
    assert cubic_sparsity(50, 100, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    student.load_state_dict(teacher.state_dict())
    pruning = GradualPruning(0.75, every=5, end=0.5)
    objective = distill.Objective(kd=distill.Term(losses.kl, temperature=2.0))
    run = distill.Distiller(
        student, teachers.Module(teacher), objective, progress=False, select_metric=None,
        callbacks=[pruning],
    )  # fmt: skip
    run.fit(DataLoader(digits[0], batch_size=64, shuffle=True), max_steps=40)
    steps, reached = zip(*pruning.history, strict=True)
    assert steps[-1] == 20 and list(reached) == sorted(reached)
    assert reached[-1] == pytest.approx(0.75, abs=1e-3) and sparsity(student) == reached[-1]


def test_channel_pruning_removes_channels_and_keeps_the_model_runnable():
    from distill.compress.prune import prune_channels
    from distill.models import build_model

    torch.manual_seed(0)
    model = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [16, 32], "hidden": 64})
    x = torch.randn(3, 1, 28, 28)
    before, after = prune_channels(model, x[:1], ratio=0.5)
    assert after < 0.45 * before and after == sum(p.numel() for p in model.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16]
    assert model(x).shape == (3, 10)  # the output layer keeps its 10 classes


@pytest.mark.parametrize("scheme", ["int8", "int8_weight_only", "int4_weight_only"])
def test_qat_student_converts_to_what_it_trained_as_and_reloads(scheme, tmp_path):
    from distill.compress.quantize import convert_qat, load_quantized, prepare_qat, save_quantized

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))

    model, x = mlp(), torch.randn(16, 64)
    float_out = model(x)
    assert prepare_qat(model, scheme) == ["0", "2"]
    fake = model(x)
    assert 0 < float((fake - float_out).abs().max()) < 0.1  # rounding, simulated
    fake.square().mean().backward()
    assert model[0].weight.grad is not None  # straight-through gradients reach the weights
    torch.optim.SGD(model.parameters(), lr=0.5).step()  # trained: no longer the float start
    with torch.no_grad():
        fake = model(x)
    convert_qat(model, scheme)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fake, atol=1e-5, rtol=1e-5)
    size = save_quantized(model, tmp_path / "q.safetensors")
    float_bytes = sum(p.numel() * 4 for p in mlp().parameters())
    assert size < 0.5 * float_bytes if scheme != "int4_weight_only" else size < float_bytes
    reloaded = load_quantized(mlp(), tmp_path / "q.safetensors", scheme)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


@pytest.mark.e2e
def test_onnx_export_matches_pytorch_and_a_mismatch_is_an_error(tmp_path):
    from distill.compress.export import (
        ParityError,
        check_parity,
        export_onnx,
        onnx_latency_ms,
        quantize_onnx_int8,
    )
    from distill.models import build_model

    torch.manual_seed(0)
    model = build_model("zoo:cnn", 10, (1, 28, 28), {"channels": [8, 16], "hidden": 32}).eval()
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    path = export_onnx(model, x[:1], tmp_path / "student.onnx")
    parity = check_parity(model, path, [(x[:17], y[:17]), (x[17:], y[17:])])  # batch sizes vary
    assert parity.examples == 40 and parity.agreement == 1.0 and parity.max_abs_diff < 1e-4
    int8 = quantize_onnx_int8(path, tmp_path / "student.int8.onnx")
    assert check_parity(model, int8, [x], min_agreement=0.8, atol=None).agreement >= 0.8
    assert onnx_latency_ms(path, x[0], repeats=3) > 0
    with torch.no_grad():
        model.fc.bias[0] += 100.0  # the PyTorch model changes after export
    with pytest.raises(ParityError, match="disagree on"):
        check_parity(model, path, [x])


def tiny_compress_recipe(stages: list[dict]) -> dict:
    return {
        "name": "tiny_compress",
        "data": {"dataset": "mnist1d", "labeled": 400, "batch_size": 64},
        "teacher": {
            "model": "zoo:cnn",
            "args": {"channels": [16, 32], "hidden": 64},
            "train": {"max_steps": 30, "lr": 0.003},
        },
        "student": {"model": "zoo:mlp", "args": {"hidden": [128, 64]}},
        "objective": {"ce": {"loss": "cross_entropy", "weight": 0.1},
                      "kd": {"loss": "kl", "weight": 0.9, "temperature": 2.0}},
        "train": {"max_steps": 20, "lr": 0.002},
        "baseline": False,
        "compress": stages,
        "output": {"latency_repeats": 2},
    }  # fmt: skip


@pytest.mark.e2e
def test_compress_stages_run_in_a_recipe_and_each_stage_loads_back(tmp_path):
    import json

    from distill.recipes import RecipeError, validate_recipe
    from distill.runs import run_recipe
    from distill.runs.stages.compress import load_stage
    from distill.runs.tasks.classify.task import Classification

    raw = tiny_compress_recipe([
        {"kind": "channels", "ratio": 0.5, "max_steps": 8},
        {"kind": "factorize", "rank": 8, "max_steps": 8, "recover": "student"},
        {"kind": "prune", "sparsity": 0.6, "max_steps": 12, "end": 0.5},
        {"kind": "quantize", "scheme": "int8", "max_steps": 6},
    ])  # fmt: skip
    recipe = validate_recipe(raw)
    run_dir = tmp_path / "run"
    lines: list[str] = []
    summary = run_recipe(recipe, out_dir=run_dir, progress=False, log=lines.append)
    stage_lines = [line for line in lines if line.startswith("compress stage")]
    assert "8 steps of distillation from the uncompressed student" in stage_lines[1]
    assert "distillation from the teacher" in stage_lines[0]
    models = summary["models"]
    keys = [
        "compress_1_channels",
        "compress_2_factorize",
        "compress_3_prune",
        "compress_4_quantize",
    ]
    assert [k for k in models if k.startswith("compress_")] == keys
    params = [models["student"]["parameters"]] + [models[k]["parameters"] for k in keys[:3]]
    assert params == sorted(params, reverse=True) and params[1] < 0.6 * params[0]
    assert models["compress_3_prune"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert models["compress_4_quantize"]["sparsity"] == pytest.approx(0.6, abs=0.01)  # kept
    # int8 weights; on a model this small the file's header is a good part of the bytes
    quantized, pruned = (models[k]["size_bytes"] for k in (keys[3], keys[2]))
    assert quantized < 0.6 * pruned
    report = (run_dir / "report.md").read_text()
    assert "+ 4 quantize" in report
    task = Classification(recipe)
    task.prepare(False, print)
    for index, key in enumerate(keys, start=1):
        loaded = load_stage(run_dir, index)
        assert task.evaluate(loaded, None)["accuracy"] == models[key]["accuracy"]
        stage = json.loads(
            (run_dir / "compress" / key.removeprefix("compress_") / "stage.json").read_text()
        )
        assert stage["row"]["accuracy"] == models[key]["accuracy"]
    from typer.testing import CliRunner

    from distill.cli import app

    result = CliRunner().invoke(app, ["export", str(run_dir), "--int8", "--json"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["model"] == "stage 3 (prune)"  # the last float stage
    onnx, pytorch = exported["models"]["onnx"], exported["models"]["pytorch"]
    assert onnx["agreement"] >= 0.999 and onnx["accuracy"] == pytest.approx(
        models["compress_3_prune"]["accuracy"], abs=0.002
    )
    assert pytorch["accuracy"] == models["compress_3_prune"]["accuracy"]
    assert (run_dir / "export" / "student.int8.onnx").exists()
    refused = CliRunner().invoke(app, ["export", str(run_dir), "--stage", "4"])
    assert refused.exit_code == 2 and "torchao-quantized" in refused.output
    with pytest.raises(RecipeError, match="quantize must be the last stage"):
        validate_recipe(
            {**raw, "compress": [{"kind": "quantize"}, {"kind": "prune", "sparsity": 0.5}]}
        )
    with pytest.raises(RecipeError, match="only quantize may follow prune"):
        validate_recipe(
            {
                **raw,
                "compress": [{"kind": "prune", "sparsity": 0.5}, {"kind": "factorize", "rank": 4}],
            }
        )
    with pytest.raises(RecipeError, match="a channels stage needs ratio"):
        validate_recipe({**raw, "compress": [{"kind": "channels"}]})


@pytest.mark.e2e
def test_post_training_quantization_stage_and_export_from_the_recipe(tmp_path):
    from distill.recipes import validate_recipe
    from distill.runs import run_recipe
    from distill.runs.stages.compress import load_stage
    from distill.runs.tasks.classify.task import Classification

    stage = {"kind": "quantize", "scheme": "int8_weight_only", "epochs": 0}
    recipe = validate_recipe({**tiny_compress_recipe([stage]), "export": {}})
    summary = run_recipe(recipe, out_dir=tmp_path / "ptq", progress=False, log=lambda m: None)
    exported = summary["models"]["export_onnx"]  # the recipe's export: the float student
    assert exported["agreement"] >= 0.999
    assert exported["parameters"] == summary["models"]["student"]["parameters"]
    assert "| ONNX |" in (tmp_path / "ptq" / "report.md").read_text()
    row, student = summary["models"]["compress_1_quantize"], summary["models"]["student"]
    assert row["steps"] == 0 and row["size_bytes"] < 0.5 * student["size_bytes"]
    assert abs(row["accuracy"] - student["accuracy"]) < 0.02  # int8 weights change little
    loaded = load_stage(tmp_path / "ptq", 1)
    task = Classification(recipe)
    task.prepare(False, print)
    assert task.evaluate(loaded, None)["accuracy"] == row["accuracy"]
    weights = tmp_path / "ptq" / "compress" / "1_quantize" / "student.safetensors"
    damage(weights, start=-200, end=-100)
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: differs from the SHA-256")):
        load_stage(tmp_path / "ptq", 1)


@pytest.mark.e2e
def test_an_int8_qat_student_exports_as_a_static_int8_qdq_graph(tmp_path):
    """The QAT-trained student reaches deployment: its int8 weights (dequantized, then
    re-quantized per channel by ONNX Runtime) and calibrated static int8 activations in
    QDQ form, run in ONNX Runtime and checked against the torchao-quantized student."""
    import onnx

    from distill.recipes import validate_recipe
    from distill.runs import run_recipe

    stage = {"kind": "quantize", "scheme": "int8", "max_steps": 20}
    export = {"qdq": True, "calibration_examples": 128, "int8_min_agreement": 0.9}
    recipe = validate_recipe({**tiny_compress_recipe([stage]), "export": export})
    summary = run_recipe(recipe, out_dir=tmp_path / "qat", progress=False, log=lambda m: None)
    qdq, qat = summary["models"]["export_onnx_qdq"], summary["models"]["compress_1_quantize"]
    assert qdq["agreement"] >= 0.9 and abs(qdq["accuracy"] - qat["accuracy"]) < 0.05
    assert qdq["parameters"] == qat["parameters"]
    graph = onnx.load(tmp_path / "qat" / "export" / "student.qdq.onnx")
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 2  # every Linear's weight stored as int8
    assert qdq["size_bytes"] < 0.5 * summary["models"]["export_onnx"]["size_bytes"]
    assert "ONNX QDQ int8 (the QAT student)" in (tmp_path / "qat" / "report.md").read_text()


@pytest.mark.e2e
def test_each_row_is_timed_on_its_own_model_at_the_end_of_the_run(tmp_path, monkeypatch):
    """The report's latencies are measured back to back at the end, each on the model of
    its row: the distilled student as it was, not as the compression stages left it."""
    from distill.measure import parameter_count
    from distill.recipes import validate_recipe
    from distill.runs import fitting, run_recipe

    timed = []

    def fake_latency(model, example, repeats, **kwargs):
        timed.append(parameter_count(model))
        return {"latency_ms": 1.0, "latency_p10_ms": 1.0, "latency_p90_ms": 1.0}

    monkeypatch.setattr(fitting, "cpu_latency", fake_latency)
    stage = {"kind": "channels", "ratio": 0.5, "max_steps": 2}
    recipe = validate_recipe(tiny_compress_recipe([stage]))
    summary = run_recipe(recipe, out_dir=tmp_path / "run", progress=False, log=lambda m: None)
    models = summary["models"]
    rows = ["teacher", "student", "compress_1_channels"]
    assert timed == [models[row]["parameters"] for row in rows]
    assert models["compress_1_channels"]["parameters"] < models["student"]["parameters"]
