"""The Optuna study behind ``distill search``: where it is stored (SQLite in the run
directory, or a shared database), its sampler and pruner, resuming a killed search, and its
trials as report rows."""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.errors import MissingDependency
from distill.paths import json_digest
from distill.recipes import Recipe
from distill.recipes.search_spec import SearchSpec
from distill.runs.workdir import Log
from distill.training.state import lower_is_better

STUDY_FILE = "study.db"


@functools.cache
def optuna_module() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise MissingDependency(
            "distill search needs optuna: pip install 'distill[search]'"
        ) from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def scored_states() -> tuple[Any, ...]:
    """The trial states that count towards ``--trials``: trained, or stopped on purpose."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished(study: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=scored_states()))


def open_study(
    recipe: Recipe,
    run_dir: Path,
    storage: str | None,
    metric: str,
    restart: bool,
    log: Log,
    steps: int = 1,
) -> Any:
    """The recipe's study: in the run directory's SQLite file, or in ``storage`` under a
    name that digests the recipe (so another recipe never joins it); its pruner reads
    validations at training steps up to ``steps`` (a trial's budget). A local study's
    trials left running by a killed search are marked failed and drawn again."""
    optuna = optuna_module()
    spec = recipe.search
    assert spec is not None
    raw = recipe.model_dump(mode="json")
    raw["search"].pop("trials")
    name = f"{recipe.name}-{json_digest(raw, 10)}"
    local = storage is None
    url = f"sqlite:///{(run_dir / STUDY_FILE).resolve()}" if local else storage
    shared = {  # a machine that stops beating for 5 minutes: its trial is run again
        "heartbeat_interval": 60,
        "grace_period": 300,
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(),
    }
    backend = optuna.storages.RDBStorage(url, **({} if local else shared))
    if restart and not local:
        with contextlib.suppress(KeyError):  # nothing to delete
            optuna.delete_study(study_name=name, storage=backend)
    directions = ["minimize" if lower_is_better(metric) else "maximize"]
    if spec.sampler == "nsga2":
        directions.append("minimize")
    study = optuna.create_study(
        study_name=name,
        storage=backend,
        directions=directions,
        load_if_exists=True,
        pruner=make_pruner(spec, steps),
    )
    # a resumed study draws on from where it stopped, not from its first draws again
    study.sampler = make_sampler(spec, recipe.seed + len(study.get_trials(deepcopy=False)))
    if local:
        requeue_interrupted(study, log)
    return study


def make_pruner(spec: SearchSpec, steps: int) -> Any:
    """The pruner ``search.pruner`` names; its rungs are the trial's validations, every
    ``steps / search.evaluations`` training steps."""
    pruners = optuna_module().pruners
    first = max(1, steps // spec.evaluations)
    if spec.pruner == "halving":
        return pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if spec.pruner == "hyperband":
        return pruners.HyperbandPruner(min_resource=first, max_resource=steps, reduction_factor=3)
    if spec.pruner == "median":
        return pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return pruners.NopPruner()


def make_sampler(spec: SearchSpec, seed: int) -> Any:
    optuna = optuna_module()
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.population, seed=seed)
    if spec.sampler == "tpe":
        startup = min(10, max(1, spec.trials // 4))
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


def optimize(
    study: Any,
    objective: Callable[[Any], Any],
    target: int,
    jobs: int,
    timeout: float | None,
    *callbacks: Callable[[Any, Any], None],
) -> None:
    """Run ``study`` until ``target`` trials are scored, ``jobs`` at a time, within
    ``timeout`` seconds. Queued trials (the corners, interrupted ones) run first and one at
    a time: two threads may pop the same queued trial from SQLite, and the second then
    cannot report it ("Cannot tell a COMPLETE trial")."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    phases = [(queued, 1), (None, jobs)] if jobs > 1 else [(None, 1)]
    started = time.perf_counter()
    for most, phase_jobs in phases:
        trials = target - finished(study)
        trials = trials if most is None else min(trials, most)
        left = None if timeout is None else timeout - (time.perf_counter() - started)
        if trials <= 0 or (left is not None and left <= 0):
            continue
        study.optimize(
            objective,
            n_trials=trials,
            timeout=left,
            n_jobs=phase_jobs,
            callbacks=[MaxTrialsCallback(target, states=scored_states()), *callbacks],
        )


def requeue_interrupted(study: Any, log: Log) -> None:
    """Trials a killed search left running: failed, and their candidates drawn again
    (their folders hold checkpoints, so training resumes)."""
    from optuna.trial import TrialState

    waiting = [
        t.system_attrs.get("fixed_params")
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    ]
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params and trial.params not in waiting:  # not queued already
            study.enqueue_trial(trial.params)
            waiting.append(trial.params)
        log(f"search: trial {trial.number} was interrupted; it runs again")


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial as a row: its state, candidate, overrides, measurements and score."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if "student" not in trial.user_attrs:
            continue
        value = trial.values[0] if trial.values else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": value,
                **trial.user_attrs,
            }
        )
    return rows
