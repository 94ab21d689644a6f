"""The end of ``distill search``: the chosen student, and the recipe's own
(``search.compare``), distilled with the recipe's full budget once per seed, each a
complete distill run in ``final/<row>/seed_<s>/``, then timed back to back (in ONNX Runtime
too when the budget is set there)."""

from __future__ import annotations

import statistics
from typing import Any

from distill.measure import cpu_latency
from distill.recipes import Recipe, validate_recipe
from distill.runs.driver import run_recipe
from distill.runs.search import space
from distill.runs.search.report import final_metrics
from distill.training import checkpoint as ckpt

FINAL_DIR = "final"


def full_runs(runner: Any, recipe: Recipe, chosen: dict[str, Any], progress: bool) -> dict:
    """The chosen student, and the recipe's own (``search.compare``), distilled with the
    recipe's full budget once per seed (``final/<row>/seed_<s>/``, each a distill run), then
    timed back to back; the test metric (and accuracy) as mean and standard deviation over
    the seeds."""
    spec, metric, log = runner.spec, runner.metric, runner.log
    seeds = spec.seeds or [recipe.seed]
    students = {"searched": chosen}
    if spec.compare:
        students = {"hand_picked": recipe.student.model_dump(include={"model", "args"}), **students}
    out: dict[str, Any] = {}
    models = {}
    for row, student in students.items():
        values: dict[str, list[float]] = {}
        for seed in seeds:
            raw = recipe.model_dump(mode="json")
            raw.update(
                student={**raw["student"], **student}, search=None, baseline=False, seed=seed
            )
            folder = runner.run_dir / FINAL_DIR / row / f"seed_{seed}"
            log(f"full run: {row} {space.describe(student)}, seed {seed} -> {folder}")
            final = validate_recipe(raw, f"search final {row}")
            summary = run_recipe(final, out_dir=folder, progress=progress, log=log)
            tested = summary["models"]["student"]
            for name in final_metrics(metric):
                if name in tested:
                    values.setdefault(name, []).append(tested[name])
            if seed == seeds[0]:
                out[row] = {
                    "student": student,
                    "parameters": summary["models"]["student"]["parameters"],
                }
                models[row] = runner.build(student, row)
                ckpt.load_weights(models[row], folder / ckpt.STUDENT_FILE)
        out[row]["seeds"] = seeds
        for name, per_seed in values.items():  # the search's metric, and accuracy
            out[row][name] = statistics.mean(per_seed)
            out[row][f"{name}_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
            out[row][f"{name}_per_seed"] = per_seed
    onnx = bool(spec.budget.in_onnx_runtime())
    for row, model in models.items():  # back to back, so no row ran on a busier machine
        example, kwargs = runner.task.latency_input(model)
        batch, repeats = spec.budget.batch_size, recipe.output.latency_repeats
        out[row].update(cpu_latency(model, example, repeats, batch=batch, **kwargs))
        if onnx:  # the runtime the budget was set in, too
            out[row].update(space.onnx_latencies(model, example, repeats, batch))
    return out
