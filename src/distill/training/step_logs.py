"""A step's logged values, kept on the device until someone reads them.

Reading a GPU tensor into Python (``float(loss)``) waits for every queued kernel: done once
per step, it stalls the queue between steps. The engine therefore keeps each step's loss,
terms, gradient norm and example count as one small float64 tensor on the device
(``StepLogs``) and reads all the steps since the last read at once (``read_all``: one
transfer), when a metrics row is written, before a validation or a checkpoint, or when a
callback asks for a loss. The arithmetic is the one a per-step ``float`` would have done, in
float64, in the same order, so the logged numbers do not change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor

from distill.batch import Batch
from distill.objective import ObjectiveValue
from distill.training.state import RunningMeans

Share = Tensor | float  # a micro-batch's share of the global batch's rows


class StepLogs(Mapping[str, float]):
    """One optimizer step's logs: ``loss``, ``loss/<term>`` (each the global batch's mean),
    ``examples``, ``grad_norm`` (when clipping), ``lr``, ``weight/<term>`` and
    ``temperature/<term>``. A mapping of floats: reading a value read on the device waits
    for the device (``is_read`` says whether that has happened)."""

    def __init__(self, step: int, world: int) -> None:
        self.step, self.world = step, world
        self._names: list[str] = []  # loss, loss/<term>: the entries of _vector
        self._vector: Tensor | None = None  # their sums over the micro-batches, float64
        self._examples = 0.0
        self._norm: Tensor | None = None  # checked for non-finite values
        self.log_norm, self.check_norm = False, True
        self.host: dict[str, float] = {}  # weights, temperatures: known on the host
        self.tail: dict[str, float] = {}  # lr, skipped_step: logged after the norm
        self._values: dict[str, float] | None = None
        self._norm_value: float | None = None

    # -- filling (the engine) --------------------------------------------------------------

    def add_micro_batch(
        self,
        value: ObjectiveValue,
        labelled: dict[str, bool],
        shares: dict[bool, Share],
        examples: int,
    ) -> Tensor:
        """One micro-batch's part of the step's loss, to backpropagate (``micro_batch_part``;
        ``shares`` from ``micro_batch_shares``), logged with each term's value times the
        share it was weighed by."""
        if not self._names:
            self._names = ["loss", *(f"loss/{name}" for name in value.terms)]
        part, share = micro_batch_part(value, labelled, shares)
        if isinstance(share, list):
            terms = torch.stack([v.detach() for v in value.terms.values()]).double()
            terms = terms * torch.stack([torch.as_tensor(s).to(terms) for s in share])
            scaled = torch.cat([part.detach().double().reshape(1), terms]) / self.world
        else:  # one share for all: the arithmetic of one Python float per value
            parts = [value.total.detach(), *(v.detach() for v in value.terms.values())]
            scaled = torch.stack(parts).double() * share / self.world
        self._vector = scaled if self._vector is None else self._vector + scaled
        self._examples += examples
        for name, weight in value.weights.items():
            self.host[f"weight/{name}"] = weight
        for name, temperature in value.temperatures.items():
            self.host[f"temperature/{name}"] = temperature
        return part

    def set_grad_norm(self, norm: Tensor | None, logged: bool, checked: bool = True) -> None:
        """``logged``: as ``grad_norm``; ``checked``: a non-finite norm is a problem."""
        self._norm, self.log_norm = norm, logged and norm is not None
        self.check_norm = checked

    def pack(self, device: torch.device, reduce: Callable[[Tensor], Tensor] | None) -> None:
        """Put what is read later into one device tensor; ``reduce`` sums the losses and
        the examples over the processes (a collective every process calls, with no wait on
        the host). (``torch.full`` writes a number on the device without a copy from the
        host, which would wait.)"""
        assert self._vector is not None, "a step without micro-batches"
        packed = self._vector
        self._examples_packed = reduce is not None
        if reduce is not None:
            examples = torch.full((1,), self._examples, dtype=torch.float64, device=device)
            packed = reduce(torch.cat([packed, examples]))
        if self._norm is not None:
            packed = torch.cat([packed, self._norm.detach().double().reshape(1)])
        self._packed = packed

    # -- reading -------------------------------------------------------------------------------

    @property
    def is_read(self) -> bool:
        return self._values is not None

    def tensor(self) -> Tensor:
        return self._packed

    def set_read(self, numbers: list[float]) -> None:
        keys = self._names + (["examples"] if self._examples_packed else [])
        values = dict(zip(keys, numbers, strict=False))
        values.setdefault("examples", self._examples)
        self._norm_value = numbers[len(keys)] if self._norm is not None else None
        values.update(self.host)
        if self.log_norm:
            values["grad_norm"] = self._norm_value  # type: ignore[assignment]
        self._values = {**values, **self.tail}
        del self._packed  # the device tensor is no longer needed

    def read(self) -> dict[str, float]:
        if self._values is None:
            read_all([self])
        assert self._values is not None
        return self._values

    def problem(self) -> str | None:
        """What is not finite among the losses (and the gradient norm), or None."""
        values = self.read()
        terms = [k for k in values if k.startswith("loss/")]
        bad = [k for k in terms if not math.isfinite(values[k])]
        if bad:
            return f"the loss of term {bad[0].removeprefix('loss/')!r} is {values[bad[0]]}"
        if not math.isfinite(values["loss"]):
            return f"the loss is {values['loss']}"
        if self.check_norm and self._norm_value is not None and not math.isfinite(self._norm_value):
            return f"the gradient norm is {self._norm_value}"
        return None

    # -- Mapping ---------------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        norm = ["grad_norm"] if self.log_norm else []
        return [*self._names, "examples", *self.host, *norm, *self.tail]

    def __getitem__(self, key: str) -> float:
        if key in self.host or key in self.tail:
            return {**self.host, **self.tail}[key]
        return self.read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        shown: Any = self._values if self._values is not None else f"unread: {self._keys()}"
        return f"StepLogs({shown})"


def read_all(logs: list[StepLogs]) -> None:
    """Read every unread step in ``logs`` with one device-to-host transfer."""
    unread = [step for step in logs if not step.is_read]
    if not unread:
        return
    tensors = [step.tensor() for step in unread]
    sizes = [t.numel() for t in tensors]
    numbers = torch.cat(tensors).tolist()
    start = 0
    for step, size in zip(unread, sizes, strict=True):
        step.set_read(numbers[start : start + size])
        start += size


class WindowClock:
    """Examples per second of training over a logging window: the time between reads of
    the device (which end with the queue drained), leaving out validations and checkpoints
    (``restart`` after them)."""

    def __init__(self) -> None:
        self.seconds, self.examples = 0.0, 0.0
        self._mark = time.perf_counter()

    def lap(self, examples: float) -> None:
        now = time.perf_counter()
        self.seconds += now - self._mark
        self.examples += examples
        self._mark = now

    def restart(self) -> None:
        self._mark = time.perf_counter()

    @property
    def current(self) -> float:
        """Examples per second so far in this window."""
        return self.examples / self.seconds if self.seconds > 0 else 0.0

    def rate(self) -> float:
        """``current``, and a new window starts."""
        rate = self.current
        self.seconds, self.examples = 0.0, 0.0
        return rate


def total_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all ``grads`` together, without clipping them."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class LogWindow:
    """The steps since the last metrics row: read together, checked, averaged."""

    def __init__(
        self,
        check: bool,
        error: Callable[[int, str, int], Exception],
        show: Callable[[float, float], None] | None = None,
    ) -> None:
        """``check``: raise ``error(step, problem, read_at)`` at the first non-finite step
        (else the steps were checked as they ran); ``show(loss, samples/s)`` after each
        read."""
        self.check, self.error, self.show = check, error, show
        self.pending: list[StepLogs] = []
        self.means = RunningMeans()
        self.clock = WindowClock()

    def add(self, logs: StepLogs) -> None:
        self.pending.append(logs)

    def read(self) -> None:
        """Read the steps since the last read (one wait for the device), check them for
        non-finite values and add them to the running means."""
        read_all(self.pending)
        for logs in self.pending:
            problem = logs.problem() if self.check else None
            if problem is not None:
                raise self.error(logs.step, problem, self.pending[-1].step)
            values = dict(logs.read())
            self.clock.lap(values.pop("examples"))
            self.means.add(values)
        if self.pending and self.show is not None:
            self.show(self.pending[-1]["loss"], self.clock.current)
        self.pending.clear()

    def pop(self) -> dict[str, float]:
        """The means since the last row, and the examples per second of training."""
        return {**self.means.pop(), "samples_per_s": self.clock.rate()}


def grad_norm(
    accelerator: Accelerator, optimizer: torch.optim.Optimizer, max_norm: float | None
) -> Tensor | None:
    """The gradients' global norm (clipped to ``max_norm`` when set), left on the device;
    None under an fp16 loss scaler without clipping (the scaler checks the gradients)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if max_norm is not None:
        return accelerator.clip_grad_norm_(params, max_norm)
    if accelerator.scaler is not None:
        return None
    if accelerator.distributed_type == DistributedType.FSDP:  # sharded: FSDP's own norm
        return accelerator.clip_grad_norm_(params, math.inf)
    grads = [p.grad for p in params if p.grad is not None]
    return total_norm(grads) if grads else None


def global_rows(
    rows: list[Tensor | int],
    device: torch.device,
    reduce: Callable[[Tensor], Tensor] | None,
) -> Tensor | float:
    """The rows of the global batch (at least 1): a number when every count is one and
    there is one process, else a device tensor (``reduce`` sums it over the processes)."""
    if reduce is None and all(isinstance(r, int) for r in rows):
        return max(1.0, float(sum(rows)))  # type: ignore[arg-type]
    total = sum(torch.as_tensor(r, device=device) for r in rows).double()  # type: ignore[union-attr]
    if reduce is not None:
        total = reduce(total)
    return total.clamp(min=1.0)


def micro_batch_shares(
    batches: list[Batch],
    labelled: dict[str, bool],
    device: torch.device,
    reduce: Callable[[Tensor], Tensor] | None,
    world: int,
) -> list[dict[bool, Share]]:
    """Each micro-batch's share of the global batch's rows, for each kind of row the
    objective's terms average over (``labelled``: per term, whether it counts the labelled
    rows only); times ``world``, since DDP averages the gradients over the processes.
    Counts stay on the device: nothing waits."""
    kinds = set(labelled.values())
    rows = {kind: [b.row_count(kind) for b in batches] for kind in kinds}
    totals = {kind: global_rows(rows[kind], device, reduce) for kind in kinds}
    return [
        {kind: rows[kind][i] / totals[kind] * world for kind in kinds} for i in range(len(batches))
    ]


def micro_batch_part(
    value: ObjectiveValue, labelled: dict[str, bool], shares: dict[bool, Share]
) -> tuple[Tensor, Share | list[Share]]:
    """(the micro-batch's part of the step's loss, the share each term was weighed by): the
    objective's total times the micro-batch's share when every term counts the same rows,
    else each weighted term times the share of the rows it averages over."""
    if len(shares) == 1:
        share = next(iter(shares.values()))
        return value.total * loss_factor(share, value.total), share
    per_term = [shares[labelled[name]] for name in value.terms]
    part = sum(
        value.weights[name] * term * loss_factor(share, term)
        for (name, term), share in zip(value.terms.items(), per_term, strict=True)
    )
    return part, per_term  # type: ignore[return-value]


def loss_factor(share: Tensor | float, loss: Tensor) -> Tensor | float:
    """``share`` as the factor of a loss of dtype ``loss.dtype``, rounded as a Python
    number would be (to float32 for a float32 or lower-precision loss)."""
    if isinstance(share, float):
        return share
    return share.to(loss.dtype if loss.dtype == torch.float64 else torch.float32)
