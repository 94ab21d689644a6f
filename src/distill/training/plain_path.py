"""Backward and optimizer step without Accelerate's per-call checks, where they do nothing.

Accelerate's ``backward`` and its optimizer wrapper's ``step`` ask
``importlib.util.find_spec("lomo_optim")`` on every call (files looked up on disk), and its
``zero_grad`` reads the optimizer's signature: about 0.5 ms a step together on a 2-core
CPU (``benchmarks/kd_step_overhead.py`` under cProfile). Without a loss scaler, DeepSpeed,
Megatron-LM or XLA, all three end in the plain PyTorch call, which these make directly;
anything else goes through Accelerate as before. ``autocast`` skips Accelerate's (which
reads environment variables on every call) when there is no mixed precision.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

SPECIAL = (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)


def is_plain(accelerator: Accelerator) -> bool:
    """Whether Accelerate's backward and step would only call PyTorch's."""
    return (
        accelerator.scaler is None
        and accelerator.distributed_type not in SPECIAL
        and accelerator.gradient_accumulation_steps == 1
    )


def backward(accelerator: Accelerator, loss: torch.Tensor) -> None:
    if is_plain(accelerator):
        loss.backward()
    else:
        accelerator.backward(loss)


def plain_optimizer(
    accelerator: Accelerator, optimizer: torch.optim.Optimizer
) -> torch.optim.Optimizer:
    """The PyTorch optimizer inside what ``accelerator.prepare`` returned, where
    Accelerate's wrapper would only pass calls on; else the wrapper itself."""
    inner = getattr(optimizer, "optimizer", None)
    if is_plain(accelerator) and inner is not None and accelerator.sync_gradients:
        return inner
    return optimizer


def optimizer_step(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
    plain_optimizer(accelerator, optimizer).step()


def zero_grad(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
    plain_optimizer(accelerator, optimizer).zero_grad(set_to_none=True)


def autocast(accelerator: Accelerator) -> Any:
    """Accelerate's autocast context, or none in full precision."""
    if accelerator.mixed_precision == "no":
        return contextlib.nullcontext()
    return accelerator.autocast()
