"""The training engine: forward, loss, backward, step, on Hugging Face Accelerate.

    result = Distiller(student, teachers.Module(teacher), objective, lr=1e-3).fit(
        train_loader, eval_loader=val_loader, epochs=10)

One optimizer step reads ``grad_accum_steps`` micro-batches. Each micro-batch's loss is
weighted by its share of the window's rows (examples, or tokens under a mask), so the
update equals the one of a single large batch whatever the accumulation factor.
Checkpoints hold weights, optimizer, scheduler, RNG states and the data position; a
resumed run continues bit-identically on CPU. Ctrl-C finishes the current step, writes a
checkpoint and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from distill import checkpoint as ckpt
from distill import losses
from distill.batch import Batch, as_batch, logits_of
from distill.data.resumable import ResumableLoader
from distill.distributed import no_accelerator
from distill.objective import LossInputs, Objective, Term
from distill.progress import TrainingProgress
from distill.taps import Taps
from distill.teachers.base import Teacher, TeacherOutput

METRICS_FILE = "metrics.jsonl"
BEST_DIR = "best"


class TrainConfig(BaseModel):
    """Training settings; every field is validated and named in errors."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    lr_schedule: Literal["constant", "linear", "cosine", "multistep"] = "cosine"
    lr_milestones: list[float] = Field(
        default_factory=list, description="multistep: epochs at which the LR is multiplied"
    )
    lr_decay: float = Field(0.1, gt=0, le=1, description="multistep: the factor")
    warmup_steps: int = Field(0, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(None, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    cpu: bool = Field(False, description="train on the CPU even when a GPU is present")
    run_dir: Path | None = Field(None, description="where checkpoints and metrics go")
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1, description="steps; None: after each epoch")
    select_metric: str | None = Field(
        "accuracy", description="validation metric that picks the best student; None: last"
    )
    progress: bool = True


@dataclass
class FitResult:
    """What ``fit`` returns: where it ended and the validation history."""

    steps: int
    total_steps: int
    best_metric: float | None
    best_step: int | None
    evaluations: list[dict[str, float]] = field(default_factory=list)
    run_dir: Path | None = None


class Callback:
    """Override what you need; the engine calls these on the main process only, or on
    every process when ``all_ranks`` is true (a callback that changes the student, like
    gradual pruning, must run everywhere)."""

    all_ranks = False

    def on_step_end(self, distiller: Distiller, step: int, logs: dict[str, float]) -> None:
        pass

    def on_evaluate(self, distiller: Distiller, step: int, metrics: dict[str, float]) -> None:
        pass


def default_objective(has_teacher: bool) -> Objective:
    """Hinton KD (T = 4, kd_weight 0.9, ce_weight 0.1) with a teacher; labels only without."""
    if not has_teacher:
        return Objective(ce=Term(losses.cross_entropy))
    return Objective(
        ce=Term(losses.cross_entropy, weight=0.1),
        kd=Term(losses.kl, weight=0.9, temperature=4.0),
    )


def _lr_lambda(
    kind: str, warmup: int, total: int, milestones: list[int], decay: float
) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "multistep":
            return decay ** sum(step >= m for m in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def _better(metric: str, new: float, old: float | None) -> bool:
    lower_is_better = metric.endswith("loss") or metric.startswith("kl")
    return old is None or (new < old if lower_is_better else new > old)


def _allow_new_settings_in_one_process() -> None:
    """Accelerate keeps one global state per process; a script that trains a teacher in
    float32 and then a student in bf16 needs a fresh one. Only done without a distributed
    launch, where the launcher's settings must win."""
    state = AcceleratorState._shared_state
    if state and state.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state()


class _StopRequest:
    """SIGINT handler: the first Ctrl-C asks for a clean stop, the second interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _RunningMeans:
    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


class Distiller:
    """Distil ``teacher`` into ``student`` under ``objective``; settings as in TrainConfig.

    ``teacher`` may be None for a label-only baseline. ``objective`` defaults to Hinton KD
    (see ``default_objective``). ``optimizer`` may be a callable that takes the trainable
    parameters and returns a ``torch.optim.Optimizer``, overriding ``optimizer=`` names.
    ``batch_transform(batch, step)`` rewrites each training micro-batch (on the device)
    before the teacher and the student see it; on-policy distillation uses it.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        objective: Objective | None = None,
        *,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        callbacks: Iterable[Callback] = (),
        batch_transform: Callable[[Batch, int], Batch] | None = None,
        **settings: Any,
    ) -> None:
        if optimizer is not None and not callable(optimizer):
            settings["optimizer"] = optimizer
            optimizer = None
        self.config = TrainConfig(**settings)
        self.student = student
        self.teacher = teacher
        self.objective = objective or default_objective(teacher is not None)
        if self.objective.reads_teacher and teacher is None:
            raise ValueError(
                "the objective has terms that read the teacher, but teacher=None; pass a "
                "teacher (e.g. distill.teachers.Module(model)) or use labels-only terms"
            )
        self.optimizer_factory = optimizer
        self.callbacks = list(callbacks)
        self.batch_transform = batch_transform
        self.accelerator: Accelerator | None = None
        self.student_taps = Taps(student, self.objective.student_taps)
        if teacher is not None:
            teacher.add_taps(self.objective.teacher_taps)

    # -- setup -------------------------------------------------------------------------

    def _accelerate(self) -> Accelerator:
        if self.accelerator is None:
            _allow_new_settings_in_one_process()
            self.accelerator = Accelerator(
                # without CUDA: the CPU, which Accelerate needs to hear to launch over gloo
                cpu=self.config.cpu or no_accelerator(),
                mixed_precision=self.config.mixed_precision,
            )
            self.student.to(self.accelerator.device)
            self.objective.to(self.accelerator.device)
            if self.teacher is not None:
                self.teacher.to(self.accelerator.device)
        return self.accelerator

    @property
    def device(self) -> torch.device:
        return self._accelerate().device

    @property
    def is_main(self) -> bool:
        return self._accelerate().is_main_process

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=c.lr,
                momentum=c.momentum,
                weight_decay=c.weight_decay,
                nesterov=c.momentum > 0,
            )
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)

    # -- one batch -----------------------------------------------------------------------

    def _teacher_output(
        self, batch: Batch, needed: bool = True, training: bool = False
    ) -> TeacherOutput | None:
        if self.teacher is None or not needed:
            return None
        return self.teacher(batch, logits=not training or self.objective.reads("teacher_logits"))

    def _loss_inputs(
        self, batch: Batch, teacher_out: TeacherOutput | None, training: bool = False
    ) -> LossInputs:
        """What the objective reads. In training, logits no term reads are not computed in
        full (a Hugging Face causal LM keeps the last position only)."""
        full_logits = not training or self.objective.reads("student_logits")
        logits = logits_of(batch.run(self.student, logits=full_logits))
        return LossInputs(
            student_logits=logits,
            teacher_logits=teacher_out.logits if teacher_out is not None else None,
            teacher_topk=teacher_out.topk if teacher_out is not None else None,
            labels=batch.labels,
            mask=batch.mask,
            student_features=self.student_taps.pop(),
            teacher_features=teacher_out.features if teacher_out is not None else {},
        )

    def _build_projectors(self, first: Batch) -> None:
        """One forward on the first batch: checks taps and terms, creates projectors."""
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad(), self._accelerate().autocast():
            teacher_out = self._teacher_output(first, self.objective.reads_teacher, training=True)
            self.objective.build(self._loss_inputs(first, teacher_out, training=True))
        self.student.train(was_training)

    # -- training ------------------------------------------------------------------------

    def fit(
        self,
        train_loader: DataLoader,
        eval_loader: DataLoader | None = None,
        *,
        epochs: int | None = None,
        max_steps: int | None = None,
        resume: bool | str | Path | None = None,
    ) -> FitResult:
        """Train for ``epochs`` (or ``max_steps`` optimizer updates, whichever ends first).

        ``eval_loader`` is the validation split that selects the best student (by
        ``select_metric``); keep the test split for ``evaluate`` after training.
        ``resume=True`` continues from the latest checkpoint in ``run_dir``; a path resumes
        from that checkpoint.
        """
        c = self.config
        if epochs is None and max_steps is None:
            raise ValueError("fit needs epochs= or max_steps=")
        accelerator = self._accelerate()
        set_seed(c.seed)
        data = ResumableLoader(
            train_loader,
            seed=c.seed,
            rank=accelerator.process_index,
            world=accelerator.num_processes,
        )
        if len(data) == 0:
            raise ValueError("the training loader yields no batch; is the dataset empty?")
        steps_per_epoch = math.ceil(len(data) / c.grad_accum_steps)
        if epochs is None:
            epochs = math.ceil(max_steps / steps_per_epoch)  # type: ignore[operator]
        total_steps = epochs * steps_per_epoch
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        self.total_steps = total_steps  # what callbacks may schedule against

        self.objective.loss_states.to(accelerator.device)
        self._build_projectors(as_batch(next(iter(data.epoch(0)))).to(accelerator.device))
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += list(self.objective.parameters())
        optimizer = self._make_optimizer(params)
        milestones = [round(epoch * steps_per_epoch) for epoch in c.lr_milestones]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            _lr_lambda(c.lr_schedule, c.warmup_steps, total_steps, milestones, c.lr_decay),
        )
        self.student, optimizer = accelerator.prepare(self.student, optimizer)
        self.optimizer, self.scheduler = optimizer, scheduler

        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "best_metric": None,
            "best_step": None,
            "evaluations": [],
        }
        if resume:
            state = self._resume(resume, state)

        run_dir = c.run_dir
        if run_dir is not None and self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._truncate_metrics(run_dir, state["step"])

        progress = TrainingProgress(
            total_steps, enabled=c.progress and self.is_main, completed=state["step"]
        )
        with _StopRequest() as stop, progress:
            self._train(data, eval_loader, state, total_steps, epochs, stop, progress)
        if c.select_metric and state["best_step"] is not None:
            self._restore_best(state)
        if run_dir is not None and self.is_main:
            ckpt.save_weights(self._unwrapped(), run_dir / ckpt.STUDENT_FILE)
        accelerator.wait_for_everyone()  # the other processes may read it next
        return FitResult(
            steps=state["step"],
            total_steps=total_steps,
            best_metric=state["best_metric"],
            best_step=state["best_step"],
            evaluations=state["evaluations"],
            run_dir=run_dir,
        )

    def _windows(self, batches: Iterator[Any]) -> Iterator[list[Any]]:
        while window := list(itertools.islice(batches, self.config.grad_accum_steps)):
            yield window

    def _train(self, data, eval_loader, state, total_steps, epochs, stop, progress) -> None:
        c = self.config
        means = _RunningMeans()
        while state["epoch"] < epochs and state["step"] < total_steps:
            batches = data.epoch(state["epoch"], skip_batches=state["batch_in_epoch"])
            for window in self._windows(batches):
                started = time.perf_counter()
                logs = self._step(window, state["step"], total_steps)
                logs["samples_per_s"] = logs.pop("examples") / (time.perf_counter() - started)
                state["step"] += 1
                state["batch_in_epoch"] += len(window)
                step = state["step"]
                means.add(logs)
                progress.update(step, logs["loss"], logs["samples_per_s"])
                if step % c.log_every == 0 or step == total_steps:
                    self._log({"step": step, "epoch": state["epoch"], **means.pop()})
                for callback in self.callbacks:
                    if self.is_main or getattr(callback, "all_ranks", False):
                        callback.on_step_end(self, step, logs)
                epoch_done = state["batch_in_epoch"] >= len(data)
                if epoch_done:
                    state["epoch"] += 1
                    state["batch_in_epoch"] = 0
                if eval_loader is not None and (
                    step % c.eval_every == 0 if c.eval_every else epoch_done
                ):
                    self._validate(eval_loader, state)
                if stop.requested:
                    path = self._checkpoint(state)
                    where = f"checkpoint at {path}" if path else "no run_dir: nothing saved"
                    raise KeyboardInterrupt(f"training stopped by Ctrl-C at step {step}; {where}")
                if c.checkpoint_every and step % c.checkpoint_every == 0:
                    self._checkpoint(state)
                if step == total_steps or epoch_done:
                    break
        done = state["evaluations"]
        if eval_loader is not None and (not done or done[-1]["step"] != state["step"]):
            self._validate(eval_loader, state)
        self._checkpoint(state)

    def _step(self, window: list[Any], step: int, total_steps: int) -> dict[str, float]:
        accelerator = self._accelerate()
        batches = [as_batch(raw).to(accelerator.device) for raw in window]
        if self.batch_transform is not None:  # e.g. on-policy: the student writes the answers
            with accelerator.autocast():  # in the run's precision, like the forward passes
                batches = [self.batch_transform(b, step) for b in batches]
        # each micro-batch weighs by the rows its losses average over, so that a window
        # split into micro-batches gives the update of one batch (and a batch of a transfer
        # set with no labelled row still teaches through its distillation terms)
        labelled_only = self.objective.labelled_rows_only
        rows = [b.rows(labelled_only) for b in batches]
        # over processes too: every rank weighs its rows by the rows of the global batch;
        # DDP then averages the gradients over the ranks, hence the factor ``world``
        world = accelerator.num_processes
        total_rows = max(1.0, self._global_sum(float(sum(rows))))
        self.student.train()
        logs: dict[str, float] = {"loss": 0.0, "examples": 0.0}
        for i, batch in enumerate(batches):
            share = rows[i] / total_rows * world
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(self.student)
            with sync:
                teacher_out = self._teacher_output(
                    batch, self.objective.reads_teacher, training=True
                )
                with accelerator.autocast():
                    inputs = self._loss_inputs(batch, teacher_out, training=True)
                    value = self.objective(inputs, step, total_steps)
                accelerator.backward(value.total * share)
            logs["loss"] += float(value.total.detach()) * share / world
            logs["examples"] += batch.size()
            for name, term_value in value.terms.items():
                key = f"loss/{name}"
                logs[key] = logs.get(key, 0.0) + float(term_value.detach()) * share / world
        if world > 1:  # the global batch's values, as one process would log them
            for key in [k for k in logs if k == "loss" or k.startswith("loss/")]:
                logs[key] = self._global_sum(logs[key])
            logs["examples"] = self._global_sum(logs["examples"])
        for name, weight in value.weights.items():
            logs[f"weight/{name}"] = weight
        for name, temperature in value.temperatures.items():
            logs[f"temperature/{name}"] = temperature
        if self.config.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
            logs["grad_norm"] = float(norm)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        after_step = getattr(self.teacher, "after_step", None)
        if after_step is not None:  # e.g. an EMA teacher follows the student
            after_step(step + 1, total_steps)
        return logs

    def _global_sum(self, value: float) -> float:
        """``value`` summed over the processes (itself in a single process)."""
        accelerator = self._accelerate()
        if accelerator.num_processes == 1:
            return value
        tensor = torch.tensor(value, dtype=torch.float64, device=accelerator.device)
        return float(accelerator.reduce(tensor, reduction="sum"))

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Accuracy and cross-entropy on labelled rows; with a teacher, KL(teacher ‖ student)
        at T = 1 and ``teacher_agreement``, the share of rows where the student's top class
        (next token, for LMs) is the teacher's. Means over rows (examples, or tokens under
        a mask)."""
        accelerator = self._accelerate()
        was_training = self.student.training
        self.student.eval()
        sums = {"loss": 0.0, "accuracy": 0.0, "kl_to_teacher": 0.0, "teacher_agreement": 0.0}
        labelled = rows_total = compared = 0
        for raw in loader:
            batch = as_batch(raw).to(accelerator.device)
            teacher_out = self._teacher_output(batch)
            with accelerator.autocast():
                inputs = self._loss_inputs(batch, teacher_out)
            rows = batch.rows()
            rows_total += rows
            counted = torch.ones(inputs.student_logits.shape[:-1], dtype=torch.bool)
            counted = counted.to(inputs.student_logits.device)
            if batch.mask is not None:
                counted &= batch.mask.bool()
            if batch.labels is not None:
                counted &= batch.labels != -100
            predicted = inputs.student_logits.argmax(-1)
            if teacher_out is not None and teacher_out.logits is not None:
                kl = losses.kl(inputs.student_logits, teacher_out.logits, mask=batch.mask)
                teacher_top = teacher_out.logits.argmax(-1)
            elif teacher_out is not None and teacher_out.topk is not None:  # a top-k cache
                topk = teacher_out.topk  # KL on k + 1 buckets, at the cache's temperature
                kl = losses.sparse_kl(
                    inputs.student_logits, topk, temperature=topk.temperature, mask=batch.mask
                )
                teacher_top = topk.ids[..., 0]
            answered = teacher_out is not None and (
                teacher_out.logits is not None or teacher_out.topk is not None
            )
            if answered:
                sums["kl_to_teacher"] += float(kl) * rows
                agree = (predicted == teacher_top) & counted
                sums["teacher_agreement"] += float(agree.sum())
                compared += int(counted.sum())
            if batch.labels is not None:
                ce = losses.cross_entropy(inputs.student_logits, batch.labels, mask=batch.mask)
                sums["loss"] += float(ce) * rows
                sums["accuracy"] += float(((predicted == batch.labels) & counted).sum())
                labelled += int(counted.sum())
        self.student.train(was_training)
        metrics: dict[str, float] = {"examples": float(rows_total)}
        if labelled:
            metrics["accuracy"] = sums["accuracy"] / labelled
            metrics["loss"] = sums["loss"] / max(1, rows_total)
        if self.teacher is not None:
            metrics["kl_to_teacher"] = sums["kl_to_teacher"] / max(1, rows_total)
            metrics["teacher_agreement"] = sums["teacher_agreement"] / max(1, compared)
        return metrics

    def _validate(self, loader: DataLoader, state: dict[str, Any]) -> None:
        metrics = self.evaluate(loader)
        row = {"step": state["step"], **metrics}
        state["evaluations"].append(row)
        self._log(
            {
                "step": state["step"],
                "epoch": state["epoch"],
                **{f"val/{k}": v for k, v in metrics.items()},
            }
        )
        metric = self.config.select_metric
        if metric:
            if metric not in metrics:
                raise ValueError(
                    f"select_metric={metric!r} is not a validation metric; available: "
                    f"{sorted(metrics)} (or select_metric=None to keep the last student)"
                )
            if _better(metric, metrics[metric], state["best_metric"]):
                state["best_metric"], state["best_step"] = metrics[metric], state["step"]
                self._save_best()
        if self.is_main:
            for callback in self.callbacks:
                callback.on_evaluate(self, state["step"], metrics)

    # -- persistence -------------------------------------------------------------------------

    def _unwrapped(self) -> nn.Module:
        return self._accelerate().unwrap_model(self.student)

    @property
    def model(self) -> nn.Module:
        """The student as built (unwrapped from any distributed wrapper)."""
        return self._unwrapped()

    def _save_best(self) -> None:
        run_dir = self.config.run_dir
        if run_dir is None:
            weights = self._unwrapped().state_dict()
            self._best_in_memory = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
        elif self.is_main:
            (run_dir / BEST_DIR).mkdir(parents=True, exist_ok=True)
            ckpt.save_weights(self._unwrapped(), run_dir / BEST_DIR / ckpt.STUDENT_FILE)

    def _restore_best(self, state: dict[str, Any]) -> None:
        if state["best_step"] == state["step"]:
            return  # the current weights are the best ones
        run_dir = self.config.run_dir
        if run_dir is None:
            self._unwrapped().load_state_dict(self._best_in_memory)
        else:
            self._accelerate().wait_for_everyone()
            ckpt.load_weights(self._unwrapped(), run_dir / BEST_DIR / ckpt.STUDENT_FILE)

    def _checkpoint(self, state: dict[str, Any]) -> Path | None:
        run_dir = self.config.run_dir
        accelerator = self._accelerate()
        accelerator.wait_for_everyone()
        if run_dir is None:
            return None
        path = run_dir / ckpt.CHECKPOINTS / f"step_{state['step']:07d}"
        if self.is_main:
            ckpt.save_checkpoint(
                path,
                student=self._unwrapped(),
                projectors=self.objective.projectors,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=state,
                teacher_state=getattr(self.teacher, "state_module", None),
                loss_state=self.objective.loss_states,
            )
            ckpt.prune_checkpoints(run_dir, self.config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def _resume(self, resume: bool | str | Path, state: dict[str, Any]) -> dict[str, Any]:
        if resume is True:
            if self.config.run_dir is None:
                raise ValueError("resume=True needs run_dir=; or pass the checkpoint's path")
            path = ckpt.latest_checkpoint(self.config.run_dir)
            if path is None:
                return state  # nothing to resume: start from scratch
        else:
            path = Path(resume)
            if not (path / ckpt.STATE_FILE).exists():
                path = ckpt.latest_checkpoint(path) or path
        loaded = ckpt.load_checkpoint(
            path,
            student=self._unwrapped(),
            projectors=self.objective.projectors,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            teacher_state=getattr(self.teacher, "state_module", None),
            loss_state=self.objective.loss_states,
        )
        ckpt.restore_rng(loaded.pop("rng"))
        run_dir = self.config.run_dir
        best = run_dir / BEST_DIR / ckpt.STUDENT_FILE if run_dir else None
        if loaded.get("best_step") is not None and (best is None or not best.exists()):
            loaded["best_step"] = loaded["best_metric"] = None  # best weights are not here
        return {**state, **loaded}

    def _log(self, row: dict[str, Any]) -> None:
        run_dir = self.config.run_dir
        if run_dir is None or not self.is_main:
            return
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    @staticmethod
    def _truncate_metrics(run_dir: Path, step: int) -> None:
        """On resume, drop rows an interrupted run logged after its last checkpoint."""
        path = run_dir / METRICS_FILE
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        shutil.move(tmp, path)
