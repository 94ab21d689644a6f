"""ONNX export with a check: the exported graph must predict what the PyTorch model does.

``export_onnx`` writes the model with a dynamic batch dimension (``torch.onnx.export``,
the dynamo exporter); ``quantize_onnx_int8`` makes ONNX Runtime's dynamic int8 version
(int8 weights, activations quantized at run time); ``quantize_onnx_qdq`` its static int8
version in QDQ form (QuantizeLinear/DequantizeLinear pairs around every matrix product,
activation ranges calibrated on given inputs), which ONNX Runtime fuses into integer
kernels and other runtimes read too; ``check_parity`` runs a graph in ONNX
Runtime on held-out inputs next to the PyTorch model and raises ``ParityError`` when the
top-1 predictions agree on fewer than ``min_agreement`` of the examples or (for the
float export) the logits differ by more than ``atol``.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from distill.errors import DistillError, MissingDependency

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ParityError(DistillError, RuntimeError):
    """The exported model disagrees with the PyTorch model beyond the tolerance."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependency(
            "export needs onnx, onnxscript and onnxruntime: pip install 'distill[compress]'"
        ) from error
    return onnxruntime


@torch.no_grad()
def export_onnx(model: nn.Module, example: Tensor, path: Path) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX, batch dimension dynamic;
    ``example`` is one batch of inputs."""
    _onnxruntime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1)
    example = example.cpu()
    if example.shape[0] < 2:  # a batch of one would fix the dimension
        example = torch.cat([example, example])
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: batch},),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=False,
        verbose=False,
    )
    return path


def quantize_onnx_int8(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantization of ``source`` (weights int8 per channel)."""
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():  # its advice to pre-process, logged on every call
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return Path(target)


def quantize_onnx_qdq(source: Path, target: Path, calibration: Iterable[Tensor]) -> Path:
    """ONNX Runtime's static int8 quantization of ``source`` in QDQ form: weights int8 per
    output channel (symmetric), activations uint8 per tensor with ranges from the min and
    max they take on ``calibration`` (batches of inputs), only around MatMul/Gemm (the
    Linear layers torchao's QAT quantizes)."""
    _onnxruntime()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch.cpu().numpy()}

    with _quiet_root_logger():  # "consider pre-processing": the graphs here are simple
        quantize_static(
            str(source),
            str(target),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    return Path(target)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def session(path: Path):
    """An ONNX Runtime CPU session for ``path``."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Parity:
    """How an exported graph compares with the PyTorch model on held-out inputs."""

    examples: int
    agreement: float  # share of examples with the same top-1 prediction
    max_abs_diff: float  # largest difference between the logits
    accuracy: float | None  # the exported graph's accuracy, when labels were given


@torch.no_grad()
def check_parity(
    model: nn.Module,
    path: Path,
    batches: Iterable,
    *,
    min_agreement: float = 0.99,
    atol: float | None = 1e-3,
) -> Parity:
    """Run ``path`` in ONNX Runtime and ``model`` in PyTorch on ``batches`` (inputs or
    (inputs, labels)); raise ``ParityError`` if they disagree beyond the tolerances."""
    runtime = session(path)
    model = model.eval().cpu()
    examples = agree = correct = 0
    labelled = True
    max_diff = 0.0
    for batch in batches:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        ours = model(x.cpu()).float()
        theirs = torch.from_numpy(runtime.run(None, {INPUT_NAME: x.cpu().numpy()})[0])
        max_diff = max(max_diff, float((ours - theirs).abs().max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        examples += x.shape[0]
        if y is None:
            labelled = False
        else:
            correct += int((theirs.argmax(-1) == y.cpu()).sum())
    if examples == 0:
        raise ValueError("check_parity got no inputs")
    result = Parity(examples, agree / examples, max_diff, correct / examples if labelled else None)
    if result.agreement < min_agreement or (atol is not None and max_diff > atol):
        raise ParityError(
            f"{path}: ONNX Runtime and PyTorch disagree on {examples - agree} of {examples} "
            f"held-out examples (agreement {result.agreement:.2%}, asked >= "
            f"{min_agreement:.2%}); largest logit difference {max_diff:.2e}"
            + (f" (asked <= {atol:.0e})" if atol is not None else "")
        )
    return result


def onnx_latency_ms(
    path: Path, example: Tensor, repeats: int = 50, warmup: int = 5, batch: int = 1
) -> float:
    """Median wall time of an ONNX Runtime run on the CPU of ``batch`` copies of
    ``example`` (batch 1: one request), per example, in milliseconds."""
    runtime = session(path)
    inputs = example.unsqueeze(0).cpu().expand(batch, *example.shape)
    feed = {INPUT_NAME: np.ascontiguousarray(inputs.numpy().astype(np.float32))}
    for _ in range(warmup):
        runtime.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runtime.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch
