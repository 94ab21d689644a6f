"""What a deployment cares about: parameters, bytes on disk, CPU latency per example."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_on_disk(model: nn.Module, path: Path | None = None) -> int:
    """Bytes of the model's safetensors file (written to a temporary file if no path)."""
    if path is not None and Path(path).exists():
        return Path(path).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.safetensors"
        save_model(model, str(target))
        return target.stat().st_size


def cpu_latency(
    model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5, **kwargs
) -> dict[str, float]:
    """Wall time of a batch-1 forward on the CPU, in milliseconds: the median of ``repeats``
    timed forwards after ``warmup`` untimed ones, and the 10th and 90th percentiles (the
    spread). ``kwargs`` go to the forward (e.g. a routed ensemble's ``domain``)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    if device.type != "cpu":  # moved outside inference mode: quantized weights must swap
        model.cpu()
    model.eval()
    x = example.unsqueeze(0).cpu()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x, **kwargs)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x, **kwargs)
            times.append(1000.0 * (time.perf_counter() - start))
    if device.type != "cpu":
        model.to(device)
    model.train(was_training)
    low, high = statistics.quantiles(times, n=10)[::8] if len(times) > 1 else (times[0],) * 2
    return {"latency_ms": statistics.median(times), "latency_p10_ms": low, "latency_p90_ms": high}


def cpu_latency_ms(
    model: nn.Module, example: torch.Tensor, repeats: int = 50, warmup: int = 5, **kwargs
) -> float:
    """The median of ``cpu_latency``, in milliseconds."""
    return cpu_latency(model, example, repeats, warmup, **kwargs)["latency_ms"]
