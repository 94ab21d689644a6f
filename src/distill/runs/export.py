"""``distill export RUN_DIR``: a run's student as ONNX (and ONNX Runtime int8), checked
against the PyTorch student on the run's held-out test split, with the numbers a
deployment reads: accuracy, agreement, size on disk, CPU latency per example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from distill.compress.export import (
    check_parity,
    export_onnx,
    onnx_latency_ms,
    quantize_onnx_int8,
)
from distill.errors import UsageError
from distill.measure import cpu_latency_ms
from distill.recipes import ModelSpec, Recipe
from distill.runs.classify import Data, model_from_spec, prepare_data
from distill.runs.common import loader
from distill.runs.compress import load_stage
from distill.training import Distiller
from distill.training import checkpoint as ckpt

EXPORT_DIR = "export"
EXPORT_FILE = "export.json"


def exportable_student(
    run_dir: Path, recipe: Recipe, data: Data, stage: int | None
) -> tuple[nn.Module, str]:
    """The model to export and its name: compress stage ``stage`` (0: the distilled
    student); by default the last stage that is not torchao-quantized."""
    kinds = [s.kind for s in recipe.compress]
    if stage is None:
        stage = len(kinds) - (1 if kinds and kinds[-1] == "quantize" else 0)
    if not 0 <= stage <= len(kinds):
        raise UsageError(f"--stage must be between 0 and {len(kinds)} for {run_dir}")
    if stage and kinds[stage - 1] == "quantize":
        raise UsageError(
            f"stage {stage} is torchao-quantized, which ONNX export does not take; export "
            f"stage {stage - 1} and add --int8 for ONNX Runtime's int8 version"
        )
    if stage == 0:
        return model_from_spec(ModelSpec(model=str(run_dir)), data), "student"
    return load_stage(run_dir, stage), f"stage {stage} ({kinds[stage - 1]})"


def export_run(
    run_dir: Path,
    recipe: Recipe,
    *,
    stage: int | None = None,
    int8: bool = False,
    min_agreement: float = 0.999,
    atol: float = 1e-3,
    int8_min_agreement: float = 0.97,
    log: Any = print,
) -> dict[str, Any]:
    """Export a classification run's student, check and measure it (``runs.run.export_command``
    refuses other tasks); raises ``ParityError`` when a graph disagrees with the
    PyTorch model beyond the tolerances. Writes ``<run_dir>/export/`` (the ONNX files and
    ``export.json``) and returns what it wrote to the JSON file."""
    run_dir = Path(run_dir)
    data = prepare_data(recipe)
    model, name = exportable_student(run_dir, recipe, data, stage)
    example = data.test[0][0]
    out = run_dir / EXPORT_DIR
    out.mkdir(exist_ok=True)
    weights = out / "pytorch.safetensors"
    ckpt.save_weights(model, weights)
    repeats = recipe.output.latency_repeats
    test = loader(data.test, recipe, train=False)
    rows: dict[str, dict[str, Any]] = {
        "pytorch": {
            "file": str(weights),
            "accuracy": Distiller(model, progress=False).evaluate(test)["accuracy"],
            "size_bytes": weights.stat().st_size,
            "latency_ms": cpu_latency_ms(model, example, repeats),
        }
    }
    log(f"exporting {name} of {run_dir} to ONNX")
    graphs = [("onnx", export_onnx(model, example.unsqueeze(0), out / "student.onnx"))]
    if int8:
        graphs.append(("onnx_int8", quantize_onnx_int8(graphs[0][1], out / "student.int8.onnx")))
    for key, path in graphs:
        tolerance = (
            {"min_agreement": min_agreement, "atol": atol}
            if key == "onnx"
            else {"min_agreement": int8_min_agreement, "atol": None}
        )
        parity = check_parity(model, path, ((b[0], b[1]) for b in test), **tolerance)
        rows[key] = {
            "file": str(path),
            "accuracy": parity.accuracy,
            "agreement": parity.agreement,
            "max_abs_diff": parity.max_abs_diff,
            "tolerance": tolerance,
            "size_bytes": path.stat().st_size,
            "latency_ms": onnx_latency_ms(path, example, repeats),
        }
        log(
            f"{key}: agrees with PyTorch on {parity.agreement:.2%} of {parity.examples:,} test "
            f"examples (largest logit difference {parity.max_abs_diff:.1e})"
        )
    result = {"run_dir": str(run_dir), "model": name, "models": rows}
    (out / EXPORT_FILE).write_text(json.dumps(result, indent=2))
    return result
