"""``distill search``: find the student under a deployment budget, then distil it fully.

The recipe's ``search`` section lists candidate families and their searched fields. Optuna
(TPE under the budget, NSGA-II for the Pareto front of metric and latency, or random
search) draws ``trials`` candidates. Each is built and measured on this machine first
(parameters, CPU latency per example, forward memory, optionally ONNX Runtime latency); one
over the budget is pruned without training. The others are distilled briefly from the
recipe's teacher (``search.train`` over ``train``) and scored on the validation split; the
median pruner stops a trial whose validation curve trails the earlier ones. The study
lives in ``study.db`` (SQLite) in the run directory, so a killed search resumes where it
stopped, an interrupted trial from its checkpoint; ``--storage postgresql://...`` shares
one study between machines. Then the best candidate, and the recipe's own student, are
distilled with the recipe's full budget for every seed in ``search.seeds``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.errors import NonFiniteLoss, RecipeError, UsageError
from distill.paths import json_digest
from distill.recipes import ModelSpec, Recipe, validate_recipe
from distill.runs.fitting import (
    fit_student,
    recipe_objective,
    step_budget,
    steps_per_epoch,
    teacher_module,
)
from distill.runs.search import space
from distill.runs.search.final import full_runs
from distill.runs.search.holdout import HELD_OUT, held_out_metrics, split_holdout
from distill.runs.search.report import choose, pareto_front, write_search_report
from distill.runs.search.study import (
    finished,
    open_study,
    optimize,
    optuna_module,
    trial_rows,
)
from distill.runs.table import task_for
from distill.runs.task import Searchable, Task, loader
from distill.runs.workdir import Log, open_run_dir
from distill.teachers.kinds import TeacherKind, copies_teacher
from distill.training import Callback
from distill.training.state import lower_is_better

TRIALS_DIR = "trials"
SEARCH_FILE = "search.json"


@dataclass
class Options:
    """How ``distill search`` runs: ``trials`` in all (None: the recipe's), a ``timeout`` in
    seconds, ``jobs`` trials at once (threads), an Optuna ``storage`` URL (None: SQLite in
    the run directory)."""

    trials: int | None = None
    timeout: float | None = None
    jobs: int = 1
    storage: str | None = None
    progress: bool = True


def search_recipe(
    recipe: Recipe,
    *,
    out_dir: Path | None = None,
    options: Options | None = None,
    log: Log = print,
    restart: bool = False,
) -> dict[str, Any]:
    """Everything ``distill search`` does; returns the summary written to search.json."""
    if recipe.search is None:
        raise RecipeError(
            f"recipe {recipe.name} has no search section: add search.candidates (see "
            "recipes/fashion_mnist_search.yaml)"
        )
    optuna_module()
    options = options or Options()
    onnx = recipe.search.budget.in_onnx_runtime()
    if options.jobs > 1 and onnx:
        raise UsageError(
            "--jobs: the ONNX exporter changes global torch state while other trials train, "
            f"so search.budget.{onnx[0]} needs --jobs 1 (or several processes sharing a "
            "--storage)"
        )
    run_dir = Path(out_dir) if out_dir is not None else recipe.output.dir / f"{recipe.name}-search"
    with open_run_dir(recipe, run_dir, restart, log):
        return search_in(task_for(recipe), run_dir, options, restart, log)


def search_in(
    task: Task, run_dir: Path, options: Options, restart: bool, log: Log
) -> dict[str, Any]:
    recipe, spec = task.recipe, task.recipe.search
    assert spec is not None and isinstance(task, Searchable)  # the recipe checks it
    task.prepare(options.progress, log)
    task.preflight()
    metric = spec.metric or task.search_metric
    runner = TrialRunner(task, recipe, None, run_dir, metric, log)
    # candidates built without the teacher: the space and the budget are checked before
    # the teacher trains
    early = not task.students_from_teacher and not any(
        copies_teacher(c.model) for c in spec.candidates
    )
    if early:
        limits = runner.resolve_limits()
        families = runner.check_families(limits)
    if recipe.teacher is not None and recipe.teacher.kind is not TeacherKind.EMA:
        runner.teacher, _ = task.teacher(options.progress, log)
    runner.recipe = task.objectives().recipe
    if not early:
        limits = runner.resolve_limits()
        families = runner.check_families(limits)
    study = open_study(recipe, run_dir, options.storage, metric, restart, log, runner.steps)
    # the first run decides which families are searched: a resumed study keeps its space
    runner.families = study.user_attrs.setdefault("families", families)
    study.set_user_attr("families", runner.families)
    if not study.get_trials(deepcopy=False):  # first, the cheapest corners: they fit the budget
        for params in space.corner_trials(spec.candidates, runner.families):
            study.enqueue_trial(params)
    target = options.trials or spec.trials
    done = finished(study)
    if done < target:
        shown = ", ".join(f"{k} <= {space.amount(k, v)}" for k, v in limits.items()) or "none"
        log(f"search: {target - done} of {target} trials to run ({spec.sampler}); budget: {shown}")
        with TrialProgress(target, done, options.progress) as bar:
            optimize(study, runner, target, options.jobs, options.timeout, bar)
    rows = trial_rows(study)
    chosen = choose(rows, metric, limits)
    log(f"chosen: trial {chosen['number']}, {space.describe(chosen['student'])}")
    final = full_runs(runner, recipe, chosen["student"], options.progress)
    summary = {
        "name": recipe.name,
        "sampler": spec.sampler,
        "metric": metric,
        "budget": limits,
        "batch_size": spec.budget.batch_size,
        "trials": rows,
        "pareto": pareto_front(rows, metric),
        "chosen": chosen,
        "final": final,
    }
    (run_dir / SEARCH_FILE).write_text(json.dumps(summary, indent=2))
    write_search_report(run_dir, summary)
    return summary


class TrialProgress:
    """A rich progress bar over the trials (an Optuna callback), with the best score."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.progress = None
        if enabled:
            self.progress = Progress(
                TextColumn("[bold]search"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[best]}"),
                TimeElapsedColumn(),
            )
            self.task = self.progress.add_task("trials", total=total, completed=done, best="")

    def __enter__(self) -> TrialProgress:
        if self.progress is not None:
            self.progress.start()
        return self

    def __call__(self, study: Any, trial: Any) -> None:
        if self.progress is None:
            return
        values = [t.values[0] for t in study.get_trials(deepcopy=False) if t.values]
        pick = min if study.directions[0].name == "MINIMIZE" else max
        best = f"best {pick(values):.4f}" if values else ""
        self.progress.update(self.task, completed=finished(study), best=best)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


class PruneByValidation(Callback):
    """Reports each validation of a trial to Optuna and stops the trial when its pruner
    says so (the median pruner: below the median of earlier trials at the same step)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_evaluate(self, distiller: Any, step: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("stopped", f"pruned at step {step}: {self.metric} {value:.4g}")
            raise optuna_module().TrialPruned()


class TrialRunner:
    """Optuna's objective: one candidate drawn, built, measured against the budget, then
    distilled briefly in ``trials/<digest>/`` and scored on the validation split."""

    def __init__(
        self,
        task: Task,
        recipe: Recipe,
        teacher: torch.nn.Module | None,
        run_dir: Path,
        metric: str,
        log: Log,
    ) -> None:
        assert recipe.search is not None
        self.task, self.recipe, self.data, self.teacher = task, recipe, task.data, teacher
        self.spec, self.run_dir, self.metric, self.log = recipe.search, run_dir, metric, log
        try:
            self.rows, self.held_out = split_holdout(self.data.student_train, self.spec.holdout)
        except ValueError as error:
            raise RecipeError(str(error)) from None
        self.per_epoch = steps_per_epoch(self.rows, self.trial_recipe)
        self.steps = step_budget(self.trial_recipe, self.per_epoch)
        self.limits: dict[str, float] = {}
        self.families = space.labels(self.spec.candidates)
        self.guard = threading.Lock()
        self.folder_locks: dict[str, threading.Lock] = {}

    @property
    def trial_recipe(self) -> Recipe:
        """The recipe a trial trains with: ``search.train`` over its ``train``."""
        raw = self.recipe.model_dump(mode="json")
        raw["train"] = {**raw["train"], **self.spec.train}
        return validate_recipe(raw, "search.train")

    def build(self, student: dict[str, Any], where: str) -> torch.nn.Module:
        torch.manual_seed(self.recipe.seed)
        model_spec = ModelSpec(model=student["model"], args=student["args"])
        try:
            return self.task.build_student(model_spec, self.teacher)
        except (TypeError, ValueError) as error:
            raise RecipeError(f"{where}: {space.describe(student)}: {error}") from None

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        onnx = bool(self.spec.budget.in_onnx_runtime())
        repeats, batch = self.recipe.output.latency_repeats, self.spec.budget.batch_size
        return space.measure(self.task, model, repeats, onnx, batch)

    def resolve_limits(self) -> dict[str, float]:
        """The budget in numbers: ``student`` is the recipe's own student, measured now
        (timed ``space.ROUNDS`` times: ``space.budget_limits``)."""
        wanted, rounds = self.spec.budget.limits(), []
        own = self.recipe.student.model_dump(include={"model", "args"})
        measured = [k for k, v in wanted.items() if v == "student"]
        if measured:
            model = self.build(own, "student")
            timed = any(name in space.TIMED for name in measured)
            rounds = [self.measure(model) for _ in range(space.ROUNDS if timed else 1)]
        self.limits, said = space.budget_limits(wanted, rounds, self.spec.budget.margin)
        if said:
            self.log(
                f"budget: the recipe's student {space.describe(own)} measures {'; '.join(said)}"
            )
        return self.limits

    def costs(self, model: torch.nn.Module) -> dict[str, float]:
        """``model`` measured against the limits: timed again if only a timed one is over."""
        return space.settled(self.measure(model), self.limits, lambda: self.measure(model))

    def check_families(self, limits: dict[str, float]) -> list[str]:
        """Build every family at its cheapest corner before any training: an unknown field
        fails here, a family whose cheapest corner breaks the budget is left out (saying
        so), and a budget no family meets fails. Returns the families searched."""
        names = space.labels(self.spec.candidates)
        seen: dict[str, list[float]] = {name: [] for name in limits}
        kept = []
        for i, (name, candidate) in enumerate(zip(names, self.spec.candidates, strict=True)):
            corner = space.smallest(candidate)
            measured = self.costs(self.build(corner, f"search.candidates.{i}"))
            broken = space.over_budget(measured, limits)
            if broken:
                self.log(
                    f"search: {name} left out, its cheapest corner is over budget ({broken[0]})"
                )
            else:
                kept.append(name)
            for limit in limits:
                seen[limit].append(measured[limit])
        if not kept:
            low = {name: min(values) for name, values in seen.items()}
            broken = [
                f"{k} <= {space.amount(k, limits[k])} (smallest {space.amount(k, low[k])})"
                for k in limits
                if low[k] > limits[k]
            ]
            raise RecipeError(
                "search.budget: no candidate's cheapest corner meets "
                + ("; ".join(broken) or f"all of {limits} at once")
                + ": widen the budget or search smaller candidates"
            )
        return kept

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        optuna = optuna_module()
        student = space.suggest(trial, self.spec.candidates, self.families)
        trial.set_user_attr("student", student)
        trial.set_user_attr("overrides", space.overrides(student))
        try:
            model = self.build(student, f"trial {trial.number}")
        except RecipeError as error:  # a point of the space that does not exist
            trial.set_user_attr("stopped", f"cannot be built ({error})")
            self.log(f"{error}: cannot be built, pruned")
            raise optuna.TrialPruned() from None
        measured = self.costs(model)
        for name, value in measured.items():
            trial.set_user_attr(name, value)
        costs = ", ".join(f"{k} {space.amount(k, v)}" for k, v in measured.items())
        broken = space.over_budget(measured, self.limits)
        if broken:
            trial.set_user_attr("over_budget", "; ".join(broken))
            self.log(f"trial {trial.number}: {space.describe(student)}: over budget ({broken[0]})")
            raise optuna.TrialPruned()
        key = json_digest(student, 12)
        with self.guard:  # a candidate drawn twice at once (--jobs) trains once, then resumes
            folder_lock = self.folder_locks.setdefault(key, threading.Lock())
        with folder_lock:
            return self.train(trial, student, model, key, costs, measured)

    def train(
        self,
        trial: Any,
        student: dict[str, Any],
        model: torch.nn.Module,
        key: str,
        costs: str,
        measured: dict[str, float],
    ) -> float | tuple[float, float]:
        optuna = optuna_module()
        callbacks = []
        if self.spec.sampler != "nsga2" and self.spec.pruner != "none":
            # a held-out metric is measured at the end: the pruner reads the validation's
            pruned_by = self.metric
            if self.metric in HELD_OUT:
                pruned_by = "loss" if lower_is_better(self.metric) else "accuracy"
            callbacks.append(PruneByValidation(trial, pruned_by))
        recipe = self.trial_recipe
        live = None if self.teacher is None else teacher_module(recipe, self.teacher)
        try:
            distiller, result, seconds = fit_student(
                recipe,
                model,
                live,
                recipe_objective(recipe, self.per_epoch, self.teacher)(model),
                run_dir=self.run_dir / TRIALS_DIR / key,
                train_loader=loader(self.rows, recipe, True),
                val_loader=loader(self.data.val, recipe, False),
                max_steps=self.steps,
                eval_every=max(1, self.steps // self.spec.evaluations),
                progress=False,
                callbacks=callbacks,
                log=lambda _: None,
            )
        except NonFiniteLoss as error:
            trial.set_user_attr("stopped", str(error))
            raise optuna.TrialPruned() from None
        except optuna.TrialPruned:
            self.log(
                f"trial {trial.number}: {space.describe(student)}: {trial.user_attrs['stopped']}"
            )
            raise
        if self.held_out is not None:
            for name, value in held_out_metrics(
                distiller.evaluate, loader(self.held_out, recipe, False)
            ).items():
                trial.set_user_attr(name, value)
        if self.metric in HELD_OUT:
            score = trial.user_attrs[self.metric]
        else:
            score = best_value(result.evaluations, self.metric, recipe.train.select_metric)
        trial.set_user_attr("seconds", seconds)
        self.log(
            f"trial {trial.number}: {space.describe(student)}: {costs}; "
            f"val {self.metric} {score:.4f} ({seconds:.0f} s)"
        )
        return (score, measured["latency_ms"]) if self.spec.sampler == "nsga2" else score


def best_value(evaluations: list[dict[str, float]], metric: str, selected: str | None) -> float:
    """The validation ``metric`` of the model a trial keeps: its best one when the engine
    keeps the best model by it, else its last."""
    if metric not in evaluations[-1]:
        raise RecipeError(
            f"search.metric {metric!r} is not a validation metric; available: "
            f"{sorted(k for k in evaluations[-1] if k != 'step')}"
        )
    values = [row[metric] for row in evaluations]
    if selected != metric:
        return values[-1]
    return min(values) if lower_is_better(metric) else max(values)
