"""Function matching (Beyer et al., CVPR 2022, "Knowledge distillation: A good teacher is
patient and consistent") on Fashion-MNIST: the CNN teacher and the 5x smaller CNN student
of ``classic_kd.py``, a longer budget, and the label-only student trained with the same
budget *and* the same augmentation, so a gain is the teacher's and not the augmentation's.

Two regimes: every one of the 54,000 training labels, or 2,000 of them with the other
training images as a transfer set that only the teacher labels (as in ``classic_kd.py``;
the label-only student gets the same number of steps on its 1,800 examples).

Rows (each a recipe run by ``distill run``; the teacher, trained once on every label, is
loaded from its checkpoint by every row):

- ``plain``: labels only, and KD (Hinton: 0.1 CE + 0.9 KL at T = 4) on plain inputs;
- ``mixup`` / ``cutmix``: labels only on those views (mixed labels), function matching
  (KL at T = 1 alone, teacher and student on the same view, ``data.mix``; and at T = 4,
  as ``distill doctor`` advises for this over-confident teacher), and DIST (Huang 2022)
  with function matching (its cross-entropy on the mixed labels). CutMix comes with random
  crops and flips.

Every student trains ``--epochs`` epochs (Adam-W, cosine LR) and is measured once on the
test split at its last step (no selection on validation).

    python benchmarks/function_matching.py                  # 3 seeds, both regimes
    python benchmarks/function_matching.py --seeds 0 --epochs 1 --regimes 2k-labels
    python benchmarks/function_matching.py --tables-only    # the .md again from the .json
    python benchmarks/function_matching.py --epochs 30 --regimes all-labels --views mixup \
        --rows DIST --out benchmarks/results/function_matching_30ep.md   # a longer budget

Writes ``benchmarks/results/function_matching.md`` (and ``.json``, after every run: a
killed benchmark rerun with the same settings trains only what it had not finished, and a
run of other rows or regimes keeps the ones already there) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from classic_kd import (
    KD,
    METHODS,
    STUDENT,
    TEACHER,
    earlier_results,
    gap_closed,
    mean_std,
    raw_recipe,
)

from distill.recipes import validate_recipe
from distill.runs import run_recipe
from distill.runs.store import teacher_cache_dir
from distill.runs.tasks.classify.task import Classification

ROOT = Path(__file__).parent
FM = {"kd": {"loss": "kl", "weight": 1.0, "temperature": 1.0}}
# `distill doctor` on the 20-epoch teacher: over-confident (ECE 0.058), calibrating T 2.61,
# "use a higher KD temperature (around the calibrating one or above)"
FM_DOCTOR = {"kd": {"loss": "kl", "weight": 1.0, "temperature": 4.0}}
REGIMES = {"all-labels": None, "2k-labels": 2000}
# view -> (data fields, its name in the rows)
VIEWS: dict[str, tuple[dict, str]] = {
    "plain": ({}, "plain inputs"),
    "cutmix": ({"augment": True, "mix": {"kind": "cutmix", "alpha": 1.0}}, "crop + flip + CutMix"),
    "mixup": ({"mix": {"kind": "mixup", "alpha": 0.4}}, "mixup (α 0.4)"),
}
Row = tuple[dict, dict, str | None, str]


def rows_for(views: list[str]) -> dict[str, Row]:
    """row -> (recipe objective, data fields, the name of the run's label-only baseline row
    or None when the run trains no baseline, the label-only row it is compared with)."""
    rows: dict[str, Row] = {}
    for view in views:
        fields, named = VIEWS[view]
        if view == "plain":
            rows["KD (Hinton 2015)"] = (KD, fields, "labels only", "labels only")
            continue
        labels_only = f"labels only, {named} (mixed labels)"
        rows[f"function matching: KL at T = 1, {named}"] = (FM, fields, labels_only, labels_only)
        rows[f"function matching: KL at T = 4 (the doctor's advice), {named}"] = (
            FM_DOCTOR, fields, None, labels_only
        )  # fmt: skip
        rows[f"DIST + function matching, {named}"] = (
            METHODS["DIST (Huang 2022)"], fields, None, labels_only
        )  # fmt: skip
    return rows


def chosen_rows(rows: dict[str, Row], wanted: list[str] | None) -> dict[str, Row]:
    """The rows whose names contain one of ``wanted`` (all rows when None). A kept row
    whose label-only row no kept row trains trains that label-only row itself."""
    if not wanted:
        return rows
    kept = {name: row for name, row in rows.items() if any(w in name for w in wanted)}
    if not kept:
        raise SystemExit(f"--rows {wanted} matches none of: {', '.join(rows)}")
    trained = {row[2] for row in kept.values()}
    return {
        name: (row if row[2] is not None or row[3] in trained else (*row[:2], row[3], row[3]))
        for name, row in kept.items()
    }


def teacher_checkpoint(teacher_epochs: int) -> tuple[dict[str, Any], float]:
    """The classic_kd teacher trained ``teacher_epochs`` epochs on every label (trained
    once, or loaded from the teacher store) as a spec that every row loads, and its test
    accuracy."""
    raw = raw_recipe(None, KD, 0, 1)
    raw["teacher"] = {**TEACHER, "train": {**TEACHER["train"], "epochs": teacher_epochs}}
    recipe = validate_recipe(raw)
    task = Classification(recipe)
    task.prepare(False, print)
    teacher, _ = task.teacher(False, print)
    accuracy = task.evaluate(teacher, None)["accuracy"]
    path = teacher_cache_dir(recipe) / "teacher.safetensors"
    return {"model": TEACHER["model"], "args": TEACHER["args"], "checkpoint": str(path)}, accuracy


def train_row(
    regime: str, method: str, row: Row, seed: int, teacher: dict, epochs: int
) -> dict[str, dict[str, float]]:
    """One recipe run: {row name: {accuracy, seconds}} for its student and its baseline."""
    objective, view, baseline, _ = row
    raw = raw_recipe(REGIMES[regime], objective, seed, epochs)
    raw["data"] = {**raw["data"], **view}
    raw["teacher"] = teacher
    raw["train"] = {**raw["train"], "select_metric": None}
    raw["baseline"] = baseline is not None
    with tempfile.TemporaryDirectory() as folder:
        summary = run_recipe(
            validate_recipe(raw), out_dir=Path(folder), progress=False, log=lambda m: None
        )
    models = summary["models"]
    return {
        name: {"accuracy": models[key]["accuracy"], "seconds": models[key]["train_seconds"]}
        for name, key in ((baseline, "baseline"), (method, "student"))
        if name is not None
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (regime, row, seed) not in the results file yet, writing it after each."""
    out: Path = args.out.with_suffix(".json")
    settings = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
    results = earlier_results(out, {"settings": settings, "regimes": {}, "commands": []})
    teacher, results["teacher_accuracy"] = teacher_checkpoint(args.teacher_epochs)
    print(f"teacher: {100 * results['teacher_accuracy']:.2f}%", flush=True)
    results["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    command = (
        f"python benchmarks/function_matching.py --seeds {' '.join(map(str, args.seeds))} "
        f"--epochs {args.epochs} --teacher-epochs {args.teacher_epochs} --regimes "
        f"{' '.join(args.regimes)} --views {' '.join(args.views)}"
        + (f" --rows {' '.join(repr(r) for r in args.rows)}" if args.rows else "")
    )
    if command not in results["commands"]:
        results["commands"].append(command)
    for regime in args.regimes:
        rows = results["regimes"].setdefault(regime, {})
        for method, row in chosen_rows(rows_for(args.views), args.rows).items():
            names = [name for name in (row[2], method) if name is not None]
            for name in names:
                rows.setdefault(name, {"reference": row[3], "runs": {}})
            for seed in args.seeds:
                if all(str(seed) in rows[name]["runs"] for name in names):
                    continue
                measured = train_row(regime, method, row, seed, teacher, args.epochs)
                for name, result in measured.items():
                    rows[name]["runs"][str(seed)] = result
                    print(
                        f"{regime}, {name}, seed {seed}: {100 * result['accuracy']:.2f}% in "
                        f"{result['seconds']:.0f} s",
                        flush=True,
                    )
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(results, indent=2))
    args.out.write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    teacher = results["teacher_accuracy"]
    settings = results["settings"]
    lines = [
        "# Function matching on Fashion-MNIST",
        "",
        f"Teacher: the CNN of classic_kd.md, trained {settings['teacher_epochs']} epochs on "
        f"every label ({100 * teacher:.2f}% test accuracy), loaded by every row. Student: "
        f"zoo:cnn {STUDENT['args']['channels']} + {STUDENT['args']['hidden']}, "
        f"{settings['epochs']} epochs (batch 128, Adam-W, lr 0.002, cosine), measured at its "
        "last step on the 10,000 test images; mean ± std over seeds. all-labels: 54,000 "
        "labelled training images. 2k-labels: 2,000 labels (1,800 train + 200 validation), "
        "the other training images a transfer set for the distilled students; the label-only "
        "student gets the same number of steps on its 1,800. Gap closed = (row − its "
        "label-only student) / (teacher − that student): KD against plain labels only, each "
        "function-matching row against labels only on the same views, with mixed labels. "
        f"Machine: {results['machine']}.",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in results["commands"]) + ".",
    ]
    for regime in [r for r in REGIMES if r in results["regimes"]]:
        rows = results["regimes"][regime]
        lines += [
            "",
            f"## {regime}",
            "",
            "| method | budget | test accuracy (%) | gap closed | per seed (%) | time (s) |",
            "| --- | --- | ---: | ---: | --- | ---: |",
        ]
        for name, row in rows.items():
            runs = [row["runs"][seed] for seed in sorted(row["runs"], key=int)]
            if not runs:
                continue
            accuracies = [r["accuracy"] for r in runs]
            mean = statistics.mean(accuracies)
            reference = statistics.mean(
                r["accuracy"] for r in rows[row["reference"]]["runs"].values()
            )
            gap = "" if name == row["reference"] else gap_closed(mean, reference, teacher)
            per_seed = ", ".join(f"{100 * a:.2f}" for a in accuracies)
            seconds = statistics.mean(r["seconds"] for r in runs)
            lines.append(
                f"| {name} | {settings['epochs']} epochs | {mean_std(accuracies)} | {gap} | "
                f"{per_seed} | {seconds:.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument(
        "--views", nargs="+", default=["plain", "mixup"], choices=list(VIEWS),
        help="plain: labels only and KD; mixup, cutmix: labels only and function matching",
    )  # fmt: skip
    parser.add_argument(
        "--rows", nargs="+", help="only the rows whose names contain one of these (and the "
        "label-only rows they are compared with)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "function_matching.md")
    parser.add_argument(
        "--tables-only", action="store_true", help="rewrite the .md from the .json, train nothing"
    )
    args = parser.parse_args()
    if args.tables_only:
        results = json.loads(args.out.with_suffix(".json").read_text())
        args.out.write_text(markdown(results))
    else:
        results = run(args)
    print(markdown(results))


if __name__ == "__main__":
    main()
