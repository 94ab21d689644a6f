"""``distill export RUN_DIR``: a run's student as ONNX (and ONNX Runtime int8), checked
against the PyTorch student on the run's held-out test split, with the numbers a
deployment reads: accuracy, agreement, size on disk, CPU latency per example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Subset

from distill.compress.export import (
    check_parity,
    export_onnx,
    onnx_latency_ms,
    quantize_onnx_int8,
    quantize_onnx_qdq,
)
from distill.compress.quantize import dequantized
from distill.errors import UsageError
from distill.measure import cpu_latency_ms
from distill.recipes import Recipe
from distill.runs.stages.compress import load_stage
from distill.runs.task import Exportable, Task, loader
from distill.runs.workdir import Log
from distill.training import Distiller
from distill.training import checkpoint as ckpt
from distill.training.distributed import on_main

EXPORT_DIR = "export"
EXPORT_FILE = "export.json"


def exportable_stages(
    recipe: Recipe, stage: int | None, qdq: bool
) -> tuple[int | None, int | None]:
    """(float stage to export as ONNX, int8 stage to export as QDQ ONNX), either None:
    by default the last stage that is not torchao-quantized, and, with ``qdq``, the last
    stage if it is int8-quantized; ``stage`` (0: the distilled student) picks one."""
    kinds = [s.kind for s in recipe.compress]
    int8_last = bool(kinds) and kinds[-1] == "quantize" and recipe.compress[-1].scheme == "int8"
    if stage is None:
        last_float = len(kinds) - (1 if kinds and kinds[-1] == "quantize" else 0)
        return last_float, len(kinds) if int8_last and qdq else None
    if not 0 <= stage <= len(kinds):
        raise UsageError(f"--stage must be between 0 and {len(kinds)} for this run")
    if stage and kinds[stage - 1] == "quantize":
        if not qdq or recipe.compress[stage - 1].scheme != "int8":
            raise UsageError(
                f"stage {stage} is torchao-quantized, which float ONNX export does not take: "
                "add --qdq for an int8 stage's static int8 QDQ graph, or export stage "
                f"{stage - 1} and add --int8 for ONNX Runtime's int8 version"
            )
        return None, stage
    return stage, None


def exportable_student(task: Task, run_dir: Path, stage: int) -> tuple[nn.Module, str]:
    """The model of compress stage ``stage`` (0: the distilled student) and its name."""
    if stage == 0:
        assert isinstance(task, Exportable)
        return task.deployed_student(run_dir), "student"
    student = task.load_student(run_dir)
    kind = task.recipe.compress[stage - 1].kind
    return load_stage(run_dir, stage, student), f"stage {stage} ({kind})"


def export_run(
    run_dir: Path,
    task: Task,
    *,
    stage: int | None = None,
    int8: bool = False,
    qdq: bool = False,
    calibration_examples: int = 512,
    min_agreement: float = 0.999,
    atol: float = 1e-3,
    int8_min_agreement: float = 0.97,
    log: Any = print,
) -> dict[str, Any]:
    """Export the student of a run of ``task`` (an ``Exportable`` one, built for the run's
    recipe), check and measure it;
    raises ``ParityError`` when a graph disagrees with the PyTorch
    model beyond the tolerances. A float stage becomes ONNX (and, with ``int8``, ONNX
    Runtime's dynamic int8 version); an int8 QAT stage (with ``qdq``) a static int8 QDQ
    graph, calibrated on ``calibration_examples`` training inputs and checked against the
    torchao-quantized student. Writes ``<run_dir>/export/`` (the ONNX files and
    ``export.json``) and returns what it wrote to the JSON file."""
    run_dir, recipe = Path(run_dir), task.recipe
    data = task.prepare(False, log)
    float_stage, int8_stage = exportable_stages(recipe, stage, qdq)
    # loaded (and their checksums verified) before anything is written
    chosen = {
        s: exportable_student(task, run_dir, s) for s in {float_stage, int8_stage} if s is not None
    }
    out = run_dir / EXPORT_DIR
    out.mkdir(exist_ok=True)
    test = loader(data.test, recipe, train=False)
    check = {"repeats": recipe.output.latency_repeats, "test": test, "log": log}
    rows: dict[str, dict[str, Any]] = {}
    names = []
    if float_stage is not None:
        model, name = chosen[float_stage]
        names.append(name)
        rows.update(
            float_rows(model, name, out, int8, min_agreement, atol, int8_min_agreement, check)
        )
    if int8_stage is not None:
        model, name = chosen[int8_stage]
        names.append(name)
        calibration = Subset(
            data.student_train, range(min(calibration_examples, len(data.student_train)))
        )  # type: ignore[arg-type]
        batches = [batch[0] for batch in DataLoader(calibration, batch_size=64)]
        log(
            f"exporting {name} of {run_dir} as static int8 QDQ ONNX "
            f"({len(calibration)} calibration inputs)"
        )
        float_copy = out / "student.qat.onnx"  # the QAT weights as floats, quantized next
        export_onnx(dequantized(model), batches[0][:2], float_copy)
        path = quantize_onnx_qdq(float_copy, out / "student.qdq.onnx", batches)
        float_copy.unlink()
        tolerance = {"min_agreement": int8_min_agreement, "atol": None}
        rows["onnx_qdq"] = graph_row("onnx_qdq", model, path, tolerance, check)
    result = {"run_dir": str(run_dir), "model": " and ".join(names), "models": rows}
    (out / EXPORT_FILE).write_text(json.dumps(result, indent=2))
    return result


def float_rows(
    model: nn.Module,
    name: str,
    out: Path,
    int8: bool,
    min_agreement: float,
    atol: float,
    int8_min_agreement: float,
    check: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """The PyTorch model, its ONNX export and (with ``int8``) ONNX Runtime's dynamic int8."""
    weights = out / "pytorch.safetensors"
    ckpt.save_weights(model, weights)
    example = next(iter(check["test"]))[0][0]
    rows: dict[str, dict[str, Any]] = {
        "pytorch": {
            "file": str(weights),
            "accuracy": Distiller(model, progress=False).evaluate(check["test"])["accuracy"],
            "size_bytes": weights.stat().st_size,
            "latency_ms": cpu_latency_ms(model, example, check["repeats"]),
        }
    }
    check["log"](f"exporting {name} to ONNX")
    path = export_onnx(model, example.unsqueeze(0), out / "student.onnx")
    rows["onnx"] = graph_row(
        "onnx", model, path, {"min_agreement": min_agreement, "atol": atol}, check
    )
    if int8:
        path = quantize_onnx_int8(path, out / "student.int8.onnx")
        tolerance = {"min_agreement": int8_min_agreement, "atol": None}
        rows["onnx_int8"] = graph_row("onnx_int8", model, path, tolerance, check)
    return rows


def graph_row(
    key: str, model: nn.Module, path: Path, tolerance: dict[str, Any], check: dict[str, Any]
) -> dict[str, Any]:
    """An exported graph checked against ``model`` on the test split, and measured."""
    parity = check_parity(model, path, ((b[0], b[1]) for b in check["test"]), **tolerance)
    check["log"](
        f"{key}: agrees with PyTorch on {parity.agreement:.2%} of {parity.examples:,} test "
        f"examples (largest logit difference {parity.max_abs_diff:.1e})"
    )
    example = next(iter(check["test"]))[0][0]
    return {
        "file": str(path),
        "accuracy": parity.accuracy,
        "agreement": parity.agreement,
        "max_abs_diff": parity.max_abs_diff,
        "tolerance": tolerance,
        "size_bytes": path.stat().st_size,
        "latency_ms": onnx_latency_ms(path, example, check["repeats"]),
    }


def export_rows(
    task: Task, recipe: Recipe, run_dir: Path, models: dict[str, dict[str, Any]], log: Log
) -> dict[str, dict[str, Any]]:
    """The recipe's ``export``: report rows for the ONNX graphs (``export_onnx``, …)."""
    spec = recipe.export
    assert spec is not None
    result = on_main(lambda: export_run(run_dir, task, **spec.model_dump(), log=log))
    if result is None:  # not the main process: it exports alone
        return {}
    stages = [k for k in models if k.startswith("compress_")]
    floats = [k for k in stages if not k.endswith("_quantize")]
    source = {  # which report row each graph was exported from
        "onnx": floats[-1] if floats else "student",
        "onnx_qdq": stages[-1] if stages else "student",
    }
    return {
        f"export_{key}": {
            **row,
            "parameters": models[source.get(key, source["onnx"])]["parameters"],
        }
        for key, row in result["models"].items()
        if key != "pytorch"
    }
