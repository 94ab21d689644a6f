"""Features without labels on Fashion-MNIST (issue 38): DINO and BYOL from scratch, a frozen
self-supervised teacher distilled into a smaller encoder without labels, a random encoder,
and the same CNN trained on the probe's 2,000 labels alone; each judged by k-NN and linear
probes (2,000 labels, all) on the test split. Every row is a ``distill run`` of
``recipes/fashion_mnist_dino.yaml``; results are kept in ``--json`` after each run, so a
killed benchmark rerun continues where it stopped.

    python benchmarks/selfsup_features.py --epochs 20 --seeds 0 1 2
    python benchmarks/selfsup_features.py --epochs 1 --seeds 0 --json /tmp/quick.json

Goals (the issue's): the best label-free student's probe on 2,000 labels beats the
2,000-label supervised CNN by >= 3 points on every seed, its k-NN accuracy is >= 80%, and
the distilled small student keeps >= 95% of its teacher's probe accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.cli.shared import quiet_libraries  # noqa: E402
from distill.recipes import load_recipe  # noqa: E402
from distill.runs import run_recipe  # noqa: E402
from distill.runs.table import task_for  # noqa: E402

RECIPE = ROOT / "recipes" / "fashion_mnist_dino.yaml"
SMALL = "{channels: [8, 16], hidden: 64}"  # an encoder about 7x smaller than the recipe's
METHODS = {"dino": "{dino: {loss: dino}}", "byol": "{byol: {loss: byol}}"}
KEYS = ("knn_accuracy", "probe_2000", "probe_all", "head_accuracy", "parameters")


def run(name: str, work: Path, seed: int, epochs: int, *more: str) -> dict:
    recipe = load_recipe(
        RECIPE,
        [
            f"name={name}",
            f"seed={seed}",
            f"train.epochs={epochs}",
            f"output.dir={work}",
            "output.latency_repeats=5",
            *more,
        ],
    )
    started = time.perf_counter()
    summary = run_recipe(recipe, progress=False, log=lambda line: None)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def random_encoder(seed: int) -> dict:
    import torch

    recipe = load_recipe(RECIPE, [f"seed={seed}"])
    task = task_for(recipe)
    task.prepare(False, lambda line: None)
    torch.manual_seed(seed)
    return task.evaluate(task.build_student(recipe.student, None))


def row(metrics: dict) -> dict:
    return {key: metrics[key] for key in KEYS if key in metrics}


def measure(args: argparse.Namespace, results: dict, save) -> None:
    work = args.work
    for seed in args.seeds:
        done = results.setdefault(str(seed), {})
        if "random encoder" not in done:
            done["random encoder"] = random_encoder(seed)
            save()
        for method, objective in METHODS.items():
            if method in done:
                continue
            summary = run(
                f"{method}_{seed}",
                work,
                seed,
                args.epochs,
                f"selfsup.method={method}",
                f"objective={objective}",
            )
            models = summary["models"]
            done[method] = {**row(models["student"]), "seconds": summary["wall_seconds"]}
            done[f"{method} (moving-average teacher)"] = row(models["ema_teacher"])
            done.setdefault("supervised, 2,000 labels", row(models["baseline"]))
            save()
        best = max(METHODS, key=lambda m: done[m]["probe_2000"])
        small = f"small from {best}"
        if small not in done:
            summary = run(
                f"small_{seed}",
                work,
                seed,
                args.epochs,
                f"selfsup.method={best}",
                f"objective={METHODS[best]}",
                f"teacher={{model: {work / f'{best}_{seed}'}}}",
                f"student.args={SMALL}",
                "baseline=false",
            )
            models = summary["models"]
            done[small] = {**row(models["student"]), "seconds": summary["wall_seconds"]}
            done[small]["teacher_probe_2000"] = models["teacher"]["probe_2000"]
            save()


def table(results: dict) -> str:
    names: list[str] = []
    for seeds in results.values():
        names += [n for n in seeds if n not in names]
    lines = [
        "| model | k-NN | probe, 2,000 labels | probe, all labels | its own classifier "
        "| parameters |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(name: str, key: str) -> str:
        values = [seeds[name][key] for seeds in results.values() if name in seeds]
        if not values:
            return "—"
        spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        return f"{100 * statistics.mean(values):.2f}{spread}"

    for name in names:
        params = next(s[name].get("parameters") for s in results.values() if name in s)
        own = cell(name, "head_accuracy") if name.startswith("supervised") else "—"
        lines.append(
            f"| {name} | {cell(name, 'knn_accuracy')} | {cell(name, 'probe_2000')} | "
            f"{cell(name, 'probe_all')} | {own} | {'—' if params is None else f'{params:,}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/selfsup.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/selfsup_benchmark")
    parser.add_argument(
        "--table", type=Path, default=ROOT / "benchmarks/results/selfsup_features.md"
    )
    args = parser.parse_args()
    os.environ.setdefault("DISTILL_PLOTS", "0")
    quiet_libraries()
    results = json.loads(args.json.read_text()) if args.json.exists() else {}

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    measure(args, results, save)
    text = report(results, args)
    print(text)
    args.table.write_text(text)


def goals(results: dict) -> list[str]:
    """Each of the issue's goals, met or not, seed by seed."""
    lines = []
    for seed, rows in sorted(results.items()):
        supervised = rows.get("supervised, 2,000 labels")
        learnt = [rows[m] for m in METHODS if m in rows]
        if supervised is None or not learnt:
            continue
        best = max(learnt, key=lambda r: r["probe_2000"])
        margin = 100 * (best["probe_2000"] - supervised["head_accuracy"])
        lines.append(
            f"- seed {seed}: the best label-free probe on 2,000 labels is {margin:+.2f} points "
            f"against the supervised CNN (goal: >= +3), k-NN {100 * best['knn_accuracy']:.2f}% "
            "(goal: >= 80%)"
        )
        small = next((r for name, r in rows.items() if name.startswith("small from")), None)
        if small is not None:
            kept = small["probe_2000"] / small["teacher_probe_2000"]
            lines.append(
                f"- seed {seed}: the small student keeps {100 * kept:.1f}% of its frozen "
                "teacher's probe accuracy (goal: >= 95%)"
            )
    return lines


def report(results: dict, args: argparse.Namespace) -> str:
    import platform

    import torch

    command = "python benchmarks/selfsup_features.py " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            "# Features without labels on Fashion-MNIST (issue 38)",
            "",
            f"`{command}` ({args.epochs} epochs per run), on {platform.machine()} with "
            f"{os.cpu_count()} CPU cores, torch {torch.__version__}; mean ± standard "
            f"deviation over seeds {', '.join(sorted(results))}. Accuracy on the 10,000 test "
            "images, in %.",
            "",
            table(results),
            "",
            *goals(results),
            "",
        ]
    )


if __name__ == "__main__":
    main()
