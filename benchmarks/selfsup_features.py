"""Features without labels on Fashion-MNIST (issue 38): DINO and BYOL from scratch, a frozen
self-supervised teacher distilled into a smaller encoder without labels, a random encoder,
and the same CNN trained on the probe's 2,000 labels alone; each judged by k-NN and linear
probes (2,000 labels, all) on the test split. Every row is a ``distill run`` of
``recipes/fashion_mnist_dino.yaml``; results are kept in ``--json`` after each run, so a
killed benchmark rerun continues where it stopped.

    python benchmarks/selfsup_features.py --epochs 4 --seeds 0 1 2 --methods byol dino
    python benchmarks/selfsup_features.py --epochs 1 --seeds 0 --json /tmp/quick.json

The settings (epochs, methods, views) are kept in the JSON file; a rerun with other
settings is refused (give another ``--json``).

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
SMALL = "{channels: [8, 16], hidden: 64}"  # an encoder 7.3x smaller than the recipe's
VIEWS = "{global_views: 2, local_views: 0, global_scale: [0.6, 1.0], flip: true}"
METHODS = {"dino": "{dino: {loss: dino}}", "byol": "{byol: {loss: byol}}"}
KEYS = ("knn_accuracy", "probe_2000", "probe_all", "head_accuracy", "encoder_parameters")


def run(name: str, args: argparse.Namespace, seed: int, *more: str) -> dict:
    views = [f"data.views={args.views}"] if args.views else []
    recipe = load_recipe(
        RECIPE,
        [
            f"name={name}",
            f"seed={seed}",
            f"train.epochs={args.epochs}",
            f"output.dir={args.work}",
            "output.latency_repeats=5",
            *views,
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
    """The table's measures of one model, and its training time on this CPU."""
    found = {key: metrics[key] for key in KEYS if key in metrics}
    return found | {"train_seconds": metrics.get("train_seconds", 0.0)}


def measure(args: argparse.Namespace, results: dict, save) -> None:
    methods = {method: METHODS[method] for method in args.methods}
    for seed in args.seeds:
        done = results.setdefault(str(seed), {})
        if "random encoder" not in done:
            done["random encoder"] = row(random_encoder(seed))
            save()
        for method, objective in methods.items():
            if method in done:
                continue
            trained = "supervised, 2,000 labels" in done  # one label-only CNN per seed
            summary = run(
                f"{method}_{seed}",
                args,
                seed,
                f"selfsup.method={method}",
                f"objective={objective}",
                f"baseline={not trained}",
            )
            models = summary["models"]
            done[method] = row(models["student"])
            done[f"{method} (moving-average teacher)"] = row(models["ema_teacher"])
            if not trained:
                done["supervised, 2,000 labels"] = row(models["baseline"])
            save()
        best = max(methods, key=lambda m: done[m]["probe_2000"])
        small = f"small from {best}"
        if small not in done:
            summary = run(
                f"small_{seed}",
                args,
                seed,
                f"selfsup.method={best}",
                f"objective={METHODS[best]}",
                f"teacher={{model: {args.work / f'{best}_{seed}'}}}",
                f"student.args={SMALL}",
                "baseline=false",
            )
            models = summary["models"]
            done[small] = row(models["student"])
            done[small]["teacher_probe_2000"] = models["teacher"]["probe_2000"]
            save()


def table(results: dict) -> str:
    names: list[str] = []
    for seeds in results.values():
        names += [n for n in seeds if n not in names]
    lines = [
        "| model | k-NN | probe, 2,000 labels | probe, all labels | its own classifier "
        "| encoder parameters | training (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def values(name: str, key: str) -> list[float]:
        return [seeds[name][key] for seeds in results.values() if key in seeds.get(name, {})]

    def cell(name: str, key: str, scale: float = 100, digits: int = 2) -> str:
        found = values(name, key)
        if not found:
            return "—"
        mean = scale * statistics.mean(found)
        spread = f" ± {scale * statistics.stdev(found):.{digits}f}" if len(found) > 1 else ""
        return f"{mean:.{digits}f}{spread}"

    for name in names:
        params = values(name, "encoder_parameters")
        own = cell(name, "head_accuracy") if name.startswith("supervised") else "—"
        trained = (
            "—"
            if "teacher)" in name or name == "random encoder"
            else cell(name, "train_seconds", scale=1, digits=0)
        )
        lines.append(
            f"| {name} | {cell(name, 'knn_accuracy')} | {cell(name, 'probe_2000')} | "
            f"{cell(name, 'probe_all')} | {own} | {f'{params[0]:,.0f}' if params else '—'} "
            f"| {trained} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["byol", "dino"])
    parser.add_argument(
        "--views", default=VIEWS, help="data.views for every run, in YAML ('': the recipe's)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/selfsup.json")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/selfsup_benchmark")
    parser.add_argument(
        "--table", type=Path, default=ROOT / "benchmarks/results/selfsup_features.md"
    )
    args = parser.parse_args()
    os.environ.setdefault("DISTILL_PLOTS", "0")
    quiet_libraries()
    wanted = {"epochs": args.epochs, "methods": args.methods, "views": args.views}
    stored = json.loads(args.json.read_text()) if args.json.exists() else {}
    if stored and stored.get("settings") != wanted:
        sys.exit(
            f"{args.json} holds results of other settings ({stored.get('settings')}); "
            "give another --json, or rerun with those settings"
        )
    results = stored.setdefault("seeds", {})
    stored["settings"] = wanted

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stored, indent=1))

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
            f"deviation over seeds {', '.join(sorted(results))}. Views: "
            f"`{args.views or 'the recipe'}`. Accuracy on the 10,000 test images, in %; "
            "training: the row's own training in seconds (the validation after each epoch "
            "included), the same machine, one run at a time.",
            "",
            table(results),
            "",
            *goals(results),
            "",
        ]
    )


if __name__ == "__main__":
    main()
