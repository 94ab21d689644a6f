"""The training engine: forward, loss, backward, step, on Hugging Face Accelerate.

    result = Distiller(student, teachers.Module(teacher), objective, lr=1e-3).fit(
        train_loader, eval_loader=val_loader, epochs=10)

One optimizer step reads ``grad_accum_steps`` micro-batches. Each term of a micro-batch's
loss is weighted by the micro-batch's share of the rows that term averages over (examples,
tokens under a mask, or the labelled ones), so the update equals the one of a single large
batch whatever the accumulation factor.
Checkpoints hold weights, optimizer, scheduler, RNG states and the data position; a
resumed run continues bit-identically on CPU. Ctrl-C finishes the current step, writes a
checkpoint and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from distill.batch import Batch, as_batch, logits_of
from distill.data.resumable import ResumableLoader
from distill.objective import LossInputs, Objective, default_objective, loss_inputs
from distill.outputs import TeacherOutput
from distill.taps import Taps
from distill.teachers import Teacher
from distill.training import checkpoint as ckpt
from distill.training.callbacks import Callback
from distill.training.config import (
    OptimizerFactory,
    TrainConfig,
    make_optimizer,
    make_scheduler,
    training_fingerprint,
)
from distill.training.distributed import make_accelerator, prepare_student
from distill.training.evaluation import EvaluationSums
from distill.training.plain_path import autocast, backward, optimizer_step, zero_grad
from distill.training.progress import TrainingProgress
from distill.training.state import (
    FitResult,
    StopRequest,
    TrainState,
    append_metrics,
    is_better,
    nonfinite_error,
    to_stderr,
    truncate_metrics,
)
from distill.training.step_logs import LogWindow, StepLogs, grad_norm, micro_batch_shares
from distill.training.tracking import Trackers


class Distiller:
    """Distil ``teacher`` into ``student`` under ``objective``; settings as in TrainConfig.

    ``teacher`` (a ``distill.teachers.Teacher``) may be None for a label-only baseline.
    ``objective`` defaults to Hinton KD (see ``default_objective``). ``optimizer`` may be a
    callable that takes the trainable parameters and returns a ``torch.optim.Optimizer``,
    overriding ``optimizer=`` names. ``batch_transform(batch, step)`` rewrites each
    training micro-batch (on the device) before the teacher and the student see it;
    on-policy distillation uses it. ``validation(student)`` measures the student at each
    validation in place of ``evaluate`` on the validation rows (features judged by k-NN).
    ``log`` receives notes (a damaged checkpoint passed over on resume). ``provenance``
    (where the lessons came from) is written into each checkpoint's ``state.json``.

    Non-finite values: a loss or gradient norm that is NaN or infinite stops training with
    ``NonFiniteLoss`` (the last checkpoint written stays the last good one), or, with
    ``on_nonfinite="skip_step"``, that step's update is dropped (logged: ``skipped_step``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Teacher | None = None,
        objective: Objective | None = None,
        *,
        optimizer: OptimizerFactory | None = None,
        callbacks: Iterable[Callback] = (),
        batch_transform: Callable[[Batch, int], Batch] | None = None,
        validation: Callable[[nn.Module], dict[str, float]] | None = None,
        log: Callable[[str], None] = to_stderr,
        provenance: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if optimizer is not None and not callable(optimizer):
            settings["optimizer"] = optimizer
            optimizer = None
        self.config = TrainConfig(**settings)
        self.student = student
        self.teacher = teacher
        self.objective = objective or default_objective(teacher)
        self.objective.check_teacher(teacher)
        self.optimizer_factory = optimizer
        self.callbacks = list(callbacks)
        self.batch_transform = batch_transform
        self.validation = validation  # None: ``evaluate`` on the validation rows
        self.log = log
        self.state_extras = {"provenance": provenance} if provenance else {}
        self.accelerator: Accelerator | None = None
        self.student_taps = Taps(student, self.objective.student_taps)
        if teacher is not None:
            teacher.add_taps(self.objective.teacher_taps)

    # -- setup -------------------------------------------------------------------------

    def _accelerate(self) -> Accelerator:
        if self.accelerator is None:
            self.accelerator = make_accelerator(self.config.cpu, self.config.mixed_precision)
            self.student.to(self.accelerator.device)
            self.objective.to(self.accelerator.device)
            if self.teacher is not None:
                self.teacher.to(self.accelerator.device)
            if self.config.compile:  # in place: the state dict keeps its names
                self.student.compile(backend=self.config.compile_backend)
                if self.teacher is not None:
                    self.teacher.compile(backend=self.config.compile_backend)
        return self.accelerator

    @property
    def device(self) -> torch.device:
        return self._accelerate().device

    @property
    def is_main(self) -> bool:
        return self._accelerate().is_main_process

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
        return loss_inputs(batch, logits, teacher_out, self.student_taps.pop())

    def _build_projectors(self, first: Batch) -> None:
        """One forward on the first batch: checks taps and terms, creates projectors."""
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad(), autocast(self._accelerate()):
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
            pin=accelerator.device.type == "cuda",
        )
        if len(data) == 0:
            raise ValueError("the training loader yields no batch; is the dataset empty?")
        steps_per_epoch = math.ceil(len(data) / c.grad_accum_steps)
        if epochs is None:
            epochs = math.ceil(max_steps / steps_per_epoch)  # type: ignore[operator]
        total_steps = min(epochs * steps_per_epoch, max_steps or epochs * steps_per_epoch)
        self.total_steps = total_steps  # what callbacks may schedule against
        self.fingerprint = training_fingerprint(c)

        self.objective.loss_states.to(accelerator.device)
        first = as_batch(next(iter(data.epoch(0)))).to(accelerator.device)
        if getattr(self.batch_transform, "shapes_inputs", False):  # the model reads its output
            first = self.batch_transform(first, -1)  # type: ignore[misc]
        self._build_projectors(first)
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += list(self.objective.parameters())
        optimizer = (self.optimizer_factory or (lambda ps: make_optimizer(ps, c)))(params)
        scheduler = make_scheduler(optimizer, c, total_steps, steps_per_epoch)
        self.student, optimizer = prepare_student(accelerator, self.student, optimizer)
        self.optimizer, self.scheduler = optimizer, scheduler

        self.best, run_dir = ckpt.BestWeights(c.run_dir, self.is_main), c.run_dir
        if run_dir is not None and not resume and self.is_main:
            ckpt.clear_run(run_dir, self.log)  # a fresh run replaces an earlier one's files
        state = self._resume(resume) if resume else TrainState()
        if run_dir is not None and self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            truncate_metrics(run_dir, state.step)
        progress = TrainingProgress(
            total_steps, enabled=c.progress and self.is_main, completed=state.step
        )
        self.trackers = Trackers(c.log_with, run_dir, c.model_dump(mode="json"), state.step)
        with StopRequest() as stop, progress, self.trackers:
            self._train(data, eval_loader, state, total_steps, epochs, stop, progress)
        if c.select_metric and state.best_step not in (None, state.step):
            accelerator.wait_for_everyone()  # the main process wrote them
            self.best.restore(self._unwrapped())
        if run_dir is not None and self.is_main:
            ckpt.save_weights(self._unwrapped(), run_dir / ckpt.STUDENT_FILE)
        accelerator.wait_for_everyone()  # the other processes may read it next
        return FitResult(
            steps=state.step,
            total_steps=total_steps,
            best_metric=state.best_metric,
            best_step=state.best_step,
            evaluations=state.evaluations,
            run_dir=run_dir,
        )

    def _windows(self, batches: Iterator[Any]) -> Iterator[list[Any]]:
        while window := list(itertools.islice(batches, self.config.grad_accum_steps)):
            yield window

    def _train(
        self,
        data: ResumableLoader,
        eval_loader: DataLoader | None,
        state: TrainState,
        total_steps: int,
        epochs: int,
        stop: StopRequest,
        progress: TrainingProgress,
    ) -> None:
        c = self.config
        stop_at = lambda step, problem, read_at: nonfinite_error(  # noqa: E731
            step, problem, c.run_dir, read_at
        )
        window = LogWindow(c.on_nonfinite == "stop", stop_at, progress.show)

        while state.epoch < epochs and state.step < total_steps:
            batches = data.epoch(state.epoch, skip_batches=state.batch_in_epoch)
            for micro_batches in self._windows(batches):
                logs = self._step(micro_batches, state.step, total_steps)
                window.add(logs)
                state.step += 1
                state.batch_in_epoch += len(micro_batches)
                step = state.step
                progress.update(step)
                for callback in self.callbacks:
                    if self.is_main or getattr(callback, "all_ranks", False):
                        callback.on_step_end(self, step, logs)
                if step % c.log_every == 0 or step == total_steps:
                    window.read()
                    self._log({"step": step, "epoch": state.epoch, **window.pop()})
                epoch_done = state.batch_in_epoch >= len(data)
                if epoch_done:
                    state.epoch += 1
                    state.batch_in_epoch = 0
                validate = eval_loader is not None and (
                    step % c.eval_every == 0 if c.eval_every else epoch_done
                )
                save = bool(c.checkpoint_every and step % c.checkpoint_every == 0)
                if validate or save or stop.requested:
                    window.read()  # no non-finite step reaches a checkpoint or the best weights
                if validate:
                    self._validate(eval_loader, state)  # type: ignore[arg-type]
                if stop.requested:
                    path = self._checkpoint(state)
                    where = f"checkpoint at {path}" if path else "no run_dir: nothing saved"
                    raise KeyboardInterrupt(f"training stopped by Ctrl-C at step {step}; {where}")
                if save:
                    self._checkpoint(state)
                if validate or save:
                    window.clock.restart()
                if step == total_steps or epoch_done:
                    break
        window.read()
        done = state.evaluations
        if eval_loader is not None and (not done or done[-1]["step"] != state.step):
            self._validate(eval_loader, state)
        self._checkpoint(state)

    def _step(self, window: list[Any], step: int, total_steps: int) -> StepLogs:
        accelerator = self._accelerate()
        batches = [as_batch(raw).to(accelerator.device) for raw in window]
        if self.batch_transform is not None:  # e.g. on-policy: the student writes the answers
            with autocast(accelerator):  # in the run's precision, like the forward passes
                batches = [self.batch_transform(b, step) for b in batches]
        # each term of a micro-batch weighs by the rows it averages over, so that a window
        # split into micro-batches (and over processes) gives the update of one batch
        labelled = self.objective.labelled_rows
        world = accelerator.num_processes
        reduce = self._reduce if world > 1 else None
        shares = micro_batch_shares(batches, labelled, accelerator.device, reduce, world)
        if not self.student.training:  # (train() walks every module: not each step)
            self.student.train()
        logs = StepLogs(step + 1, world)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(self.student)
            with sync:
                teacher_out = self._teacher_output(
                    batch, self.objective.reads_teacher, training=True
                )
                with autocast(accelerator):
                    inputs = self._loss_inputs(batch, teacher_out, training=True)
                    value = self.objective(inputs, step, total_steps)
                backward(
                    accelerator, logs.add_micro_batch(value, labelled, shares[i], batch.size())
                )
        norm = grad_norm(accelerator, self.optimizer, self.config.max_grad_norm)
        # fp16: overflowing gradients are the loss scaler's (it skips the update, lowers its scale)
        logs.set_grad_norm(norm, self.config.max_grad_norm is not None, accelerator.scaler is None)
        logs.tail["lr"] = self.optimizer.param_groups[0]["lr"]
        logs.pack(accelerator.device, self._reduce if world > 1 else None)
        # stop: checked when the step is read (next log); skip_step decides now (waits every step)
        skip = self.config.on_nonfinite == "skip_step" and logs.problem()
        if not skip:
            optimizer_step(accelerator, self.optimizer)
            self.scheduler.step()
        else:  # skip_step: the update is dropped, the schedule goes on
            logs.tail["skipped_step"] = 1.0
            with warnings.catch_warnings():  # "scheduler before optimizer": on purpose here
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        zero_grad(accelerator, self.optimizer)
        if self.teacher is not None:  # e.g. an EMA teacher follows the student
            self.teacher.after_step(step + 1, total_steps)
        return logs

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._accelerate().reduce(tensor, reduction="sum")

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Accuracy and cross-entropy on labelled rows; with a teacher, KL(teacher ‖ student)
        at T = 1 and ``teacher_agreement`` (see ``training.evaluation``)."""
        accelerator = self._accelerate()
        was_training = self.student.training
        self.student.eval()
        sums = EvaluationSums(has_teacher=self.teacher is not None)
        for raw in loader:
            batch = as_batch(raw).to(accelerator.device)
            teacher_out = self._teacher_output(batch)
            with autocast(accelerator):
                inputs = self._loss_inputs(batch, teacher_out)
            assert inputs.student_logits is not None
            sums.add(batch, inputs.student_logits, teacher_out)
        self.student.train(was_training)
        return sums.result()

    def _validate(self, loader: DataLoader, state: TrainState) -> None:
        if self.validation is not None:  # the run's own measure, e.g. k-NN on frozen features
            metrics = self.validation(self._unwrapped())
        else:
            metrics = self.evaluate(loader)
        state.evaluations.append({"step": state.step, **metrics})
        validation = {f"val/{k}": v for k, v in metrics.items()}
        self._log({"step": state.step, "epoch": state.epoch, **validation})
        metric = self.config.select_metric
        if metric:
            if metric not in metrics:
                raise ValueError(
                    f"select_metric={metric!r} is not a validation metric; available: "
                    f"{sorted(metrics)} (or select_metric=None to keep the last student)"
                )
            if is_better(metric, metrics[metric], state.best_metric):
                state.best_metric, state.best_step = metrics[metric], state.step
                self.best.save(self._unwrapped())
        if self.is_main:
            for callback in self.callbacks:
                callback.on_evaluate(self, state.step, metrics)

    # -- persistence -------------------------------------------------------------------------

    def _unwrapped(self) -> nn.Module:
        return self._accelerate().unwrap_model(self.student)

    @property
    def model(self) -> nn.Module:
        """The student as built (unwrapped from any distributed wrapper)."""
        return self._unwrapped()

    def _trainables(self) -> ckpt.Trainables:
        return ckpt.Trainables(
            student=self._unwrapped(),
            projectors=self.objective.projectors,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            teacher_state=self.teacher.state_module if self.teacher else None,
            loss_state=self.objective.loss_states,
        )

    def _checkpoint(self, state: TrainState) -> Path | None:
        run_dir = self.config.run_dir
        accelerator = self._accelerate()
        accelerator.wait_for_everyone()
        if run_dir is None:
            return None
        path = run_dir / ckpt.CHECKPOINTS / f"step_{state.step:07d}"
        if self.is_main:
            state_json = {**state.to_dict(), "settings": self.fingerprint, **self.state_extras}
            ckpt.save_checkpoint(path, self._trainables(), state_json)
            ckpt.prune_checkpoints(run_dir, self.config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return path

    def _resume(self, resume: bool | str | Path) -> TrainState:
        candidates = ckpt.resume_candidates(resume, self.config.run_dir)
        if not candidates:
            return TrainState()  # nothing to resume: start from scratch
        loaded = ckpt.load_intact(candidates, self._trainables(), self.fingerprint, self.log)
        ckpt.restore_rng(loaded.pop("rng"))
        state = TrainState.from_dict(loaded)
        if state.best_step is not None and not self.best.exists():
            state.best_step = state.best_metric = None  # the best weights are not here
        return state

    def _log(self, row: dict[str, Any]) -> None:
        run_dir = self.config.run_dir
        if run_dir is not None and self.is_main:
            append_metrics(run_dir, row)
            self.trackers.log(row)
