"""Classic KD methods on Fashion-MNIST, side by side: one teacher, then label-only, KD, DKD,
DIST, FitNets and AT students, several seeds each, in two regimes:

- ``all-labels``: every student trains on the 54,000 labelled training examples;
- ``2k-labels``: students have 2,000 labels (1,800 train + 200 validation); the distilled
  students also see the other training images, labelled only by the teacher (a transfer
  set); the label-only student gets the same number of steps on its 1,800 examples.

Then beyond one teacher (each run as ``distill run`` runs a recipe, the teachers trained
once at seed 0 and loaded by every seed, like the teacher above), with 2k labels: an
ensemble of two CNNs (mean, confidence), two specialised CNNs routed by a shop department
(clothing: classes 0-4 and 6; shoes and bags: 5, 7-9), a teacher assistant, born-again
generation 2, an EMA (mean) teacher; with all labels: two peers learning from each other.

The loss hyper-parameters are the published CIFAR-100 ones (CRD / mdistiller), not tuned
here. Accuracy is on the test split, once, for the student selected on validation.

    python benchmarks/classic_kd.py                      # 3 seeds, both regimes
    python benchmarks/classic_kd.py --seeds 1 --epochs 1 # a quick look
    python benchmarks/classic_kd.py --skip-beyond        # the classic methods only

Writes ``benchmarks/results/classic_kd.md`` (and ``.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from distill.losses import cross_entropy
from distill.objective import Objective, Term
from distill.recipes import build_objective, validate_recipe
from distill.runs import run_recipe
from distill.runs.driver import train_student
from distill.runs.fitting import Budget, steps_per_epoch
from distill.runs.store import teacher_cache_dir
from distill.runs.task import Lesson
from distill.runs.tasks.classify.task import Classification

ROOT = Path(__file__).parent
TEACHER = {
    "model": "zoo:cnn",
    "args": {"channels": [32, 64], "hidden": 128},
    "train": {"epochs": 4, "lr": 0.002, "lr_schedule": "cosine"},
}
STUDENT = {"model": "zoo:cnn", "args": {"channels": [8, 16], "hidden": 32}}

METHODS: dict[str, dict[str, dict]] = {
    "KD (Hinton 2015)": {
        "ce": {"loss": "cross_entropy", "weight": 0.1},
        "kd": {"loss": "kl", "weight": 0.9, "temperature": 4.0},
    },
    "DKD (Zhao 2022)": {
        "ce": {"loss": "cross_entropy"},
        "dkd": {
            "loss": "dkd",
            "temperature": 4.0,
            "weight": {"kind": "warmup", "value": 1.0, "epochs": 1},
            "options": {"tckd_weight": 1.0, "nckd_weight": 8.0},
        },
    },
    "DIST (Huang 2022)": {
        "ce": {"loss": "cross_entropy"},
        "dist": {
            "loss": "dist",
            "temperature": 4.0,
            "options": {"inter_weight": 2.0, "intra_weight": 2.0},
        },
    },
    "FitNets (Romero 2015)": {
        "ce": {"loss": "cross_entropy"},
        "hint": {"loss": "hint", "weight": 100.0, "student": "block2", "teacher": "block2"},
    },
    "AT (Zagoruyko 2017)": {
        "ce": {"loss": "cross_entropy"},
        "at1": {
            "loss": "attention_transfer",
            "weight": 1000.0,
            "student": "block1",
            "teacher": "block1",
        },
        "at2": {
            "loss": "attention_transfer",
            "weight": 1000.0,
            "student": "block2",
            "teacher": "block2",
        },
    },
}
REGIMES = {"all-labels": None, "2k-labels": 2000}

KD = METHODS["KD (Hinton 2015)"]
SMALLER_TEACHER = {**TEACHER, "args": {"channels": [16, 32], "hidden": 64}}
DEPARTMENTS = {"clothing": [0, 1, 2, 3, 4, 6], "shoes_and_bags": [5, 7, 8, 9]}
# row -> recipe fields on top of the 2k-labels KD recipe; "{teacher}", "{smaller}",
# "{clothing}", "{shoes_and_bags}" stand for the checkpoints of teachers trained at seed 0
BEYOND: dict[str, dict[str, Any]] = {
    "KD, ensemble of 2 CNNs (mean)": {
        "teacher": {"model": "ensemble", "combine": "mean", "temperature": 4.0,
                    "members": ["{teacher}", "{smaller}"]},
    },
    "KD, ensemble of 2 CNNs (confidence)": {
        "teacher": {"model": "ensemble", "combine": "confidence", "temperature": 4.0,
                    "members": ["{teacher}", "{smaller}"]},
    },
    "KD, 2 specialists routed by department": {
        "data": {"domains": DEPARTMENTS},
        "teacher": {"model": "ensemble", "combine": "route",
                    "members": ["{clothing}", "{shoes_and_bags}"]},
    },
    "KD through a CNN [16, 32] assistant": {
        "assistant": {"model": "zoo:cnn", "args": {"channels": [16, 32], "hidden": 64}},
    },
    "born-again, generation 2": {"generations": 2},
    "EMA (mean) teacher, no teacher": {
        "teacher": {"model": "ema", "ema_momentum": 0.99},
        "objective": {"ce": {"loss": "cross_entropy"},
                      "kd": {"loss": "kl", "temperature": 1.0,
                             "weight": {"kind": "warmup", "value": 1.0, "epochs": 2}}},
    },
    # Deep Mutual Learning is a supervised method: with all labels
    "mutual learning, 2 peers (peer 0)": {
        "labeled": None,
        "teacher": None,
        "peers": 2,
        "objective": {"mutual": {"loss": "mutual_learning", "student": "stack"}},
    },
}  # fmt: skip


BEYOND_NOTE = (
    "The first two rows repeat the table above. Teachers trained once (seed 0) on the "
    "labelled training set: the CNN above, a CNN [16, 32] + 64, and the CNN above trained on "
    "one department each; gap closed is measured against the single CNN teacher. The EMA "
    "row ramps its consistency weight up over 2 epochs (Mean Teacher's ramp-up). Assistant "
    "and born-again times include the stage before the student."
)


def raw_recipe(labeled: int | None, objective: dict, seed: int, epochs: int) -> dict:
    return {
        "name": "classic-kd-benchmark",
        "seed": seed,
        "data": {"dataset": "fashion_mnist", "labeled": labeled, "batch_size": 128},
        "teacher": TEACHER,
        "student": STUDENT,
        "objective": objective,
        "train": {"epochs": epochs, "lr": 0.002, "lr_schedule": "cosine"},
        "output": {"dir": "runs/benchmarks"},
    }


def recipe_for(labeled: int | None, objective: dict, seed: int, epochs: int):
    return validate_recipe(raw_recipe(labeled, objective, seed, epochs))


def trained_teachers(epochs: int) -> dict[str, dict]:
    """Teacher specs that load the seed-0 teachers (trained here once, or cached)."""
    specs: dict[str, dict] = {}
    for name, spec, domain in [
        ("teacher", TEACHER, None),
        ("smaller", SMALLER_TEACHER, None),
        ("clothing", TEACHER, "clothing"),
        ("shoes_and_bags", TEACHER, "shoes_and_bags"),
    ]:
        raw = raw_recipe(2000, KD, 0, epochs)
        raw["teacher"] = {**spec, "domain": domain}
        if domain is not None:
            raw["data"]["domains"] = DEPARTMENTS
        recipe = validate_recipe(raw)
        task = Classification(recipe)
        task.prepare(False, print)
        task.teacher(False, print)
        specs[name] = {
            "model": spec["model"],
            "args": spec["args"],
            "checkpoint": str(teacher_cache_dir(recipe) / "teacher.safetensors"),
            **({"domain": domain} if domain else {}),
        }
    return specs


def beyond_one_teacher(seeds: list[int], epochs: int) -> dict[str, dict]:
    """The ``BEYOND`` rows (2k labels + transfer set unless ``labeled`` says otherwise),
    each seed a recipe run; returns {regime: {row: results}}."""
    checkpoints = trained_teachers(epochs)
    sections: dict[str, dict] = {}
    for method, fields in BEYOND.items():
        fields = dict(fields)
        labeled = fields.pop("labeled", 2000)
        regime = next(name for name, count in REGIMES.items() if count == labeled)
        rows = sections.setdefault(regime, {})
        accuracies, seconds, teacher_accuracies = [], [], []
        for seed in seeds:
            raw = {**raw_recipe(labeled, KD, seed, epochs), "baseline": False}
            for key, value in fields.items():
                raw[key] = {**raw[key], **value} if key == "data" else value
            raw["teacher"] = _with_checkpoints(raw["teacher"], checkpoints)
            recipe = validate_recipe(raw)
            with tempfile.TemporaryDirectory() as out:
                summary = run_recipe(recipe, out_dir=Path(out), progress=False, log=lambda m: None)
            models = summary["models"]
            accuracies.append(models["student"]["accuracy"])
            teacher_accuracies.append(models.get("teacher", {}).get("accuracy"))
            # the stages (assistant, generation 1) count in the time; peers share one run
            seconds.append(
                sum(
                    m["train_seconds"]
                    for k, m in models.items()
                    if k in ("student", "assistant") or k.startswith("generation_")
                )
            )
            print(
                f"{regime:10s} {method:40s} seed {seed}: {100 * accuracies[-1]:.2f}% "
                f"in {seconds[-1]:.0f} s",
                flush=True,
            )
        rows[method] = {"accuracies": accuracies, "seconds": seconds}
        if teacher_accuracies[0] is not None:
            rows[method]["teacher_accuracy"] = teacher_accuracies[0]
    return sections


def _with_checkpoints(teacher: Any, checkpoints: dict[str, dict]) -> Any:
    if teacher is None or teacher.get("model") == "ema":
        return teacher
    if teacher.get("model") != "ensemble":
        return checkpoints["teacher"]
    members = [checkpoints[m.strip("{}")] for m in teacher["members"]]
    return {**teacher, "members": members}


def gap_closed(mean: float, reference: float, teacher: float) -> str:
    """(mean − reference) / (teacher − reference) as a percentage; empty when the teacher
    is not above the reference."""
    return (
        "" if teacher <= reference else f"{100 * (mean - reference) / (teacher - reference):.0f}%"
    )


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (100: fractions as percentages; 1: as
    they are), thousands separated; one value alone is written without a spread."""
    mean = statistics.mean(values) * scale
    if len(values) == 1:
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {statistics.stdev(values) * scale:,.{digits}f}"


def earlier_results(path: Path, empty: dict[str, Any]) -> dict[str, Any]:
    """A resumable benchmark's results file when it was written with ``empty["settings"]``
    (its finished runs are kept), else ``empty`` (and say so: its runs are replaced)."""
    if not path.exists():
        return empty
    before = json.loads(path.read_text())
    if before.get("settings") != empty["settings"]:
        print(f"{path} has other settings ({before.get('settings')}): starting afresh", flush=True)
        return empty
    print(f"{path}: keeping its finished runs", flush=True)
    return before


def run(seeds: list[int], epochs: int, regimes: list[str], out: Path, beyond: bool) -> dict:
    results: dict = {"seeds": seeds, "epochs": epochs, "regimes": {}}
    base = recipe_for(None, METHODS["KD (Hinton 2015)"], seed=0, epochs=epochs)
    base_task = Classification(base)
    base_task.prepare(False, print)
    started = time.perf_counter()
    teacher, info = base_task.teacher(False, print)
    teacher_acc = base_task.evaluate(teacher, None)["accuracy"]
    results["teacher"] = {
        "accuracy": teacher_acc,
        "train_seconds": info.get("train_seconds"),
        "parameters": sum(p.numel() for p in teacher.parameters()),
    }
    print(f"teacher: {100 * teacher_acc:.2f}% ({time.perf_counter() - started:.0f} s)")
    for regime in regimes:
        rows: dict[str, dict] = {}
        for method in ["labels only", *METHODS]:
            objective = METHODS.get(method, {"ce": {"loss": "cross_entropy"}})
            accuracies, seconds = [], []
            for seed in seeds:
                recipe = recipe_for(REGIMES[regime], objective, seed, epochs)
                task = Classification(recipe)
                data = task.prepare(False, print)
                per_epoch = steps_per_epoch(data.student_train, recipe)
                budget = per_epoch * epochs
                labels_only = method == "labels only"
                built = (
                    Objective(ce=Term(cross_entropy))
                    if labels_only
                    else build_objective(recipe.objective, per_epoch)
                )
                lesson = Lesson(
                    lambda student, built=built: built,
                    None if labels_only else teacher,
                    rows="baseline" if labels_only else "student",
                )
                _, metrics = train_student(
                    task,
                    recipe,
                    lesson,
                    Path(f"runs/benchmarks/{regime}/{method.split()[0]}-{seed}"),
                    Budget(budget, per_epoch, progress=False),
                )
                accuracies.append(metrics["accuracy"])
                seconds.append(metrics["train_seconds"])
                print(
                    f"{regime:10s} {method:22s} seed {seed}: {100 * metrics['accuracy']:.2f}% "
                    f"in {metrics['train_seconds']:.0f} s",
                    flush=True,
                )
            rows[method] = {"accuracies": accuracies, "seconds": seconds}
        results["regimes"][regime] = rows
    if beyond and regimes == list(REGIMES):
        results["beyond"] = beyond_one_teacher(seeds, epochs)
    results["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    teacher = results["teacher"]["accuracy"]
    lines = [
        "# Classic KD on Fashion-MNIST",
        "",
        f"Teacher: zoo:cnn [32, 64] + 128 ({results['teacher']['parameters']:,} parameters), "
        f"test accuracy {100 * teacher:.2f}%. Students: zoo:cnn [8, 16] + 32, "
        f"{results['epochs']} epochs over their training set (the label-only student of the "
        "2k-labels regime: the same number of steps), Adam-W, cosine LR, seeds "
        f"{', '.join(map(str, results['seeds']))}. Test accuracy as mean ± std over seeds; "
        "gap closed = (method − labels only) / (teacher − labels only); time = mean wall "
        f"time of one student's training. Machine: {results['machine']}.",
        "",
        "Command: `python benchmarks/classic_kd.py` "
        f"(`--seeds {' '.join(map(str, results['seeds']))} --epochs {results['epochs']}`).",
        "",
    ]
    sections = dict(results["regimes"])
    for regime, extra in results.get("beyond", {}).items():
        classic = results["regimes"][regime]
        sections[f"{regime}, beyond one teacher"] = {
            "labels only": classic["labels only"],
            "KD (Hinton 2015)": classic["KD (Hinton 2015)"],
            **extra,
        }
    for regime, rows in sections.items():
        baseline = statistics.mean(rows["labels only"]["accuracies"])
        lines += [f"## {regime}", ""]
        if regime not in results["regimes"]:
            lines += [BEYOND_NOTE, ""]
        lines += [
            "| method | test accuracy (%) | gap closed | time (s) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for method, row in rows.items():
            mean = statistics.mean(row["accuracies"])
            gap = "" if method == "labels only" else gap_closed(mean, baseline, teacher)
            if "teacher_accuracy" in row and ("ensemble" in method or "routed" in method):
                method = f"{method} (teacher: {100 * row['teacher_accuracy']:.2f})"
            lines.append(
                f"| {method} | {mean_std(row['accuracies'])} | {gap} | "
                f"{statistics.mean(row['seconds']):.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--skip-beyond", action="store_true", help="only the classic single-teacher methods"
    )
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "classic_kd.md")
    args = parser.parse_args()
    results = run(args.seeds, args.epochs, args.regimes, args.out, beyond=not args.skip_beyond)
    print(markdown(results))


if __name__ == "__main__":
    main()
