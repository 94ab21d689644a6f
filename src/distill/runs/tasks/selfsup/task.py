"""``task: self_supervised``: features learned from unlabelled images without labels.

- **From scratch** (``teacher.model: ema``): the student and its moving average see
  multi-crop views; DINO (Caron et al. 2021: the teacher's centred, sharpened outputs on the
  global views are the targets of the student's outputs on every view) or BYOL (Grill et
  al. 2020: the student's prediction regresses the teacher's projection).
- **A frozen teacher** (``teacher.model: <run directory>`` of this kind): its encoder and
  head, frozen, teach a smaller student the same way, without labels (DINOv2's
  distillation).
- **Measured** on the test split with labels the features never read: k-NN accuracy over
  every training example, and linear probes fitted on ``data.probe.labels`` examples;
  ``accuracy`` is the first probe's. The label-only baseline is the same network trained
  with cross-entropy on those labels alone (its own classifier's accuracy is
  ``head_accuracy``; it is probed like the others)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import RecipeError
from distill.losses.registry import loss_info
from distill.losses.selfsup import DINOCenter, byol
from distill.objective import Objective, Term
from distill.recipes import ModelSpec
from distill.runs.report.tables import register_layout
from distill.runs.task import (
    Diagnosable,
    Exportable,
    Lesson,
    LessonPerStage,
    SavesStudent,
    Task,
    ValidatesOwn,
    loader,
)
from distill.runs.tasks.selfsup.data import Rows, prepare_rows
from distill.runs.tasks.selfsup.doctor import diagnose_selfsup, plot_selfsup
from distill.runs.tasks.selfsup.models import SelfSupNet, build_net, embed, on_shared_views
from distill.runs.tasks.selfsup.probe import fit_probe, knn_accuracy, linear_probe
from distill.runs.tasks.selfsup.recipe import FEATURE_LOSSES
from distill.runs.tasks.selfsup.report import LAYOUT, PROJECTION, projection
from distill.runs.workdir import Log, earlier_run, load_finished
from distill.teachers.kinds import TeacherKind
from distill.training import Distiller
from distill.training import checkpoint as ckpt


def probe_key(count: int) -> str:
    """The metric of a linear probe on ``count`` labels: ``probe_2000``, ``probe_all``."""
    return f"probe_{count}" if count else "probe_all"


class SelfSupervised(Task, LessonPerStage, SavesStudent, ValidatesOwn, Exportable, Diagnosable):
    """``task: self_supervised``."""

    name = "self_supervised"
    checks = "own"
    data: Rows

    def own_checks(self, sample: int, progress: bool, log: Log) -> tuple[list[Any], list[str]]:
        """Whether a frozen teacher encoder has collapsed (``doctor``)."""
        return diagnose_selfsup(self, sample, progress, log)

    def plot_checks(self, findings: list[Any], out_dir: Path) -> dict[str, Path]:
        return plot_selfsup(findings, out_dir)

    def prepare(self, progress: bool, log: Log) -> Rows:
        self.data = prepare_rows(self.recipe)
        return self.data

    def preflight(self) -> None:
        """The views fit the images, the probes ask for labels that exist, and the student
        runs on two examples' views."""
        recipe, data = self.recipe, self.data
        views, probe = recipe.data.views, recipe.data.probe
        side = min(data.in_shape[1:])
        smallest = round(side * views.local_scale[0] ** (1 / len(data.in_shape[1:])))
        if views.local_views and smallest < 2:
            raise RecipeError(
                f"data.views.local_scale: its smallest crop is {smallest} pixel(s) of a "
                f"{side}-pixel image; raise local_scale's low end"
            )
        pool = len(data.probe_pool)  # type: ignore[arg-type]
        asked = [n for n in probe.labels if n > pool]
        if asked:
            raise RecipeError(
                f"data.probe.labels: {asked} asks for more labels than the {pool:,} training "
                "examples hold; give at most that many (or 0: all of them)"
            )
        student = self.build_student(recipe.student, None)
        batch = torch.stack([data.student_train[i]["views"] for i in range(2)])
        with torch.no_grad(), torch.random.fork_rng():
            out = student.train()(views=batch)
        if out.shape[:2] != (views.global_views + views.local_views, 2):
            raise RecipeError(
                f"student.model {recipe.student.model}: views gave {tuple(out.shape)}"
            )

    def teacher(self, progress: bool, log: Log) -> tuple[nn.Module, dict[str, Any]]:
        """A frozen encoder from an earlier run of this kind: its student, in eval mode."""
        spec = self.recipe.teacher
        assert spec is not None and spec.kind is TeacherKind.MODEL  # an ema needs none
        run_dir = Path(spec.model)
        earlier = earlier_run(run_dir, spec.model)
        if earlier.task != self.name:
            raise RecipeError(
                f"teacher.model {spec.model}: a {earlier.task} run; a frozen teacher encoder "
                f"comes from a {self.name} run (its encoder and head)"
            )
        ours, theirs = self.recipe.selfsup, earlier.selfsup  # type: ignore[attr-defined]
        if (ours.method, ours.out_dim) != (theirs.method, theirs.out_dim):
            raise RecipeError(
                f"teacher.model {spec.model}: its head is {theirs.method} with out_dim "
                f"{theirs.out_dim}; set selfsup.method and selfsup.out_dim to the same"
            )
        model = build_net(earlier, earlier.student, self.data.num_classes, self.data.in_shape)
        load_finished(model, run_dir)
        log(f"teacher {spec.model}: its {earlier.student.model} encoder, frozen")
        return model.eval().requires_grad_(False), {"model": spec.model, "train_seconds": 0.0}

    def train_teacher(self, progress: bool, log: Log) -> dict[str, Any]:
        """Nothing to train: a moving average, or an earlier run's encoder."""
        if self.recipe.teacher is not None and self.recipe.teacher.kind is TeacherKind.EMA:
            return {"model": "ema", "train_seconds": 0.0}
        return self.teacher(progress, log)[1]

    def chain_stages(self) -> list[tuple[str, ModelSpec | None, str]]:
        return []

    def stage_lesson(self, teacher: nn.Module | None, stage: str, per_epoch: int) -> Lesson:
        """The method's objective on the views, from ``teacher`` or the student's average;
        with a frozen teacher, terms matching the encoders' features too (DINOv2's
        distillation matches its head's outputs and the normalised embeddings)."""
        recipe = self.recipe
        spec, method = recipe.teacher, recipe.selfsup
        assert spec is not None  # the recipe checks it

        batches_per_epoch = per_epoch * recipe.train.grad_accum_steps  # the loss's calls

        def objective(student: nn.Module) -> Objective:
            terms = {}
            for name, term in recipe.objective.items():
                weight = term.weight  # a schedule, built like the recipe's others
                weight = weight if isinstance(weight, (int, float)) else weight.build(per_epoch)
                if term.loss in FEATURE_LOSSES:  # the encoders' features, on the shared views
                    loss = on_shared_views(loss_info(term.loss).fn)
                    taps = {"student": term.student, "teacher": term.teacher}
                    terms[name] = Term(loss, weight=weight, **taps, **term.options)
                    continue
                loss: Any = byol
                if term.loss == "dino":  # the centre is the term's state, kept in checkpoints
                    loss = DINOCenter(
                        method.out_dim,
                        momentum=method.center_momentum,
                        student_temperature=method.student_temperature,
                        teacher_temperature=method.teacher_temperature,
                        global_views=recipe.data.views.global_views,
                        teacher_temperature_start=method.teacher_temperature_start,
                        warmup_calls=round(method.warmup_epochs * batches_per_epoch),
                    )
                terms[name] = Term(loss, weight=weight)
            return Objective(terms)

        ema = spec.ema_momentum if spec.kind is TeacherKind.EMA else None
        return Lesson(objective, None if ema is not None else teacher, ema_momentum=ema)

    def build_student(self, spec: ModelSpec, teacher: nn.Module | None) -> nn.Module:
        return build_net(self.recipe, spec, self.data.num_classes, self.data.in_shape)

    def save_student(self, student: nn.Module, run_dir: Path) -> list[str]:
        """Its test features projected to 2-D, for the report's picture."""
        assert isinstance(student, SelfSupNet)
        size = self.recipe.data.eval_batch_size
        features, labels = embed(student, self.data.test, size)
        (run_dir / PROJECTION).write_text(json.dumps(projection(features, labels)))
        return []  # a picture's data, not a format of the weights

    def load_student(self, run_dir: Path) -> nn.Module:
        model = self.build_student(self.recipe.student, None)
        ckpt.load_weights(model, Path(run_dir) / ckpt.STUDENT_FILE)
        return model.eval()

    def evaluate(self, model: nn.Module, judge: Any = None) -> dict[str, Any]:
        """k-NN and linear probes on the frozen features; the classifier's own accuracy."""
        assert isinstance(model, SelfSupNet)
        recipe, data = self.recipe, self.data
        probe, size = recipe.data.probe, recipe.data.eval_batch_size
        pool, pool_labels = embed(model, data.probe_pool, size)
        test, test_labels = embed(model, data.test, size)
        metrics: dict[str, Any] = {
            "knn_accuracy": knn_accuracy(
                pool, pool_labels, test, test_labels, probe.knn_k, probe.knn_temperature
            )
        }
        for count in probe.labels:
            n = count or len(pool)
            metrics[probe_key(count)] = linear_probe(
                pool[:n], pool_labels[:n], test, test_labels, probe.steps, probe.weight_decay
            )
        metrics["accuracy"] = metrics[probe_key(probe.labels[0])]
        head = Distiller(model, None, progress=False).evaluate(loader(data.test, recipe, False))
        metrics["head_accuracy"] = head["accuracy"]
        metrics["encoder_parameters"] = float(sum(p.numel() for p in model.encoder.parameters()))
        metrics["examples"] = float(len(test))
        return metrics

    def validate(self, student: nn.Module) -> dict[str, float]:
        """After each epoch: k-NN (``knn_accuracy``) and the first probe (``accuracy``) on
        the validation split, both fitted on the first probe's labelled examples."""
        assert isinstance(student, SelfSupNet)
        probe, size = self.recipe.data.probe, self.recipe.data.eval_batch_size
        pool, pool_labels = embed(student, self.data.labelled(probe.labels[0]), size)
        val, val_labels = embed(student, self.data.val, size)
        knn = knn_accuracy(pool, pool_labels, val, val_labels, probe.knn_k, probe.knn_temperature)
        accuracy = linear_probe(pool, pool_labels, val, val_labels, probe.steps, probe.weight_decay)
        return {"knn_accuracy": knn, "accuracy": accuracy}

    def deployed_student(self, run_dir: Path) -> nn.Module:
        """The encoder with the first probe as its classifier: the features a deployment
        runs, and the classes a user reads from them (what ``distill export`` writes)."""
        model = self.load_student(run_dir)
        assert isinstance(model, SelfSupNet)
        probe = self.recipe.data.probe
        pool = self.data.labelled(probe.labels[0])
        features, labels = embed(model, pool, self.recipe.data.eval_batch_size)
        model.classifier = fit_probe(
            features, labels, probe.steps, probe.weight_decay, self.data.num_classes
        )
        return model.eval()

    def latency_input(self, model: nn.Module) -> tuple[Tensor, dict[str, Any]]:
        return self.data.test[0][0], {}

    def summary_fields(
        self, models: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        recipe = self.recipe
        before = {
            "task": self.name,
            "dataset": recipe.data.dataset,
            "method": recipe.selfsup.method,
        }
        return before, {}

    def describe_eval(self, metrics: dict[str, float]) -> str:
        probes = ", ".join(
            f"{key.removeprefix('probe_')} labels {100 * value:.2f}%"
            for key, value in metrics.items()
            if key.startswith("probe_")
        )
        return f"k-NN accuracy {100 * metrics['knn_accuracy']:.2f}%; linear probe: {probes}"

    def describe_teacher(self, info: dict[str, Any]) -> str:
        return f"{info['model']}: nothing to train"


register_layout(SelfSupervised.name, LAYOUT)
