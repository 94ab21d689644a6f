"""Function matching with every label (Beyer et al., CVPR 2022, "Knowledge distillation: A
good teacher is patient and consistent"): Fashion-MNIST, all 54,000 training labels, the
CNN teacher and the 5x smaller CNN student of ``classic_kd.py``, a longer budget, and the
label-only student trained with the same budget *and* the same augmentation, so a gain is
the teacher's and not the augmentation's.

Rows (each a recipe run by ``distill run``; the teacher is the one ``classic_kd.py``
trains, loaded from its checkpoint by every row):

- labels only, and KD (Hinton: 0.1 CE + 0.9 KL at T = 4), plain inputs;
- labels only with crop, flip and CutMix (mixed labels), and function matching: KL at T = 1
  alone, teacher and student on the same crop-flip-CutMix view (``data.mix``);
- DIST (Huang 2022) with function matching (its cross-entropy on the mixed labels).

Every student trains ``--epochs`` epochs (Adam-W, cosine LR) and is measured once on the
test split at its last step (no selection on validation).

    python benchmarks/function_matching.py                  # 3 seeds, 12 epochs
    python benchmarks/function_matching.py --seeds 0 --epochs 1   # a quick look

Writes ``benchmarks/results/function_matching.md`` (and ``.json``) and prints the table.
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
from classic_kd import KD, METHODS, STUDENT, TEACHER, mean_std, raw_recipe

from distill.recipes import validate_recipe
from distill.runs import run_recipe
from distill.runs.classify import Classification, get_teacher, prepare_data
from distill.runs.store import teacher_cache_dir

ROOT = Path(__file__).parent
FM = {"kd": {"loss": "kl", "weight": 1.0, "temperature": 1.0}}
# view -> (data fields, its name in the rows)
VIEWS: dict[str, tuple[dict, str]] = {
    "cutmix": ({"augment": True, "mix": {"kind": "cutmix", "alpha": 1.0}}, "crop + flip + CutMix"),
    "mixup": ({"mix": {"kind": "mixup", "alpha": 0.4}}, "mixup (α 0.4)"),
}


def rows_for(views: list[str], plain: bool) -> dict[str, tuple[dict, dict, str | None, str]]:
    """row -> (recipe objective, data fields, the name of the run's label-only baseline row
    or None when the run trains no baseline, the label-only row it is compared with)."""
    rows: dict[str, tuple[dict, dict, str | None, str]] = {}
    if plain:
        rows["KD (Hinton 2015)"] = (KD, {}, "labels only", "labels only")
    for view in views:
        fields, named = VIEWS[view]
        labels_only = f"labels only, {named} (mixed labels)"
        rows[f"function matching: KL at T = 1, {named}"] = (FM, fields, labels_only, labels_only)
        rows[f"DIST + function matching, {named}"] = (
            METHODS["DIST (Huang 2022)"], fields, None, labels_only
        )  # fmt: skip
    return rows


def teacher_checkpoint(epochs: int) -> tuple[dict[str, Any], float]:
    """The classic_kd teacher (trained once, or loaded from the teacher store) as a spec that
    every row loads, and its test accuracy."""
    recipe = validate_recipe(raw_recipe(None, KD, 0, epochs))
    data = prepare_data(recipe)
    teacher, _ = get_teacher(recipe, data, progress=False, log=print)
    accuracy = Classification().evaluate(teacher, recipe, data, None)["accuracy"]
    path = teacher_cache_dir(recipe) / "teacher.safetensors"
    return {"model": TEACHER["model"], "args": TEACHER["args"], "checkpoint": str(path)}, accuracy


def run(seeds: list[int], epochs: int, out: Path, views: list[str], plain: bool) -> dict:
    """Train every row; with ``plain`` False the rows of an earlier run of the same seeds
    and epochs (``out``'s JSON) are kept and these views' rows added or replaced."""
    teacher, teacher_accuracy = teacher_checkpoint(epochs)
    print(f"teacher: {100 * teacher_accuracy:.2f}%", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    earlier = out.with_suffix(".json")
    if not plain and earlier.exists():
        before = json.loads(earlier.read_text())
        if (before["seeds"], before["epochs"]) != (seeds, epochs):
            raise SystemExit(f"{earlier} has other seeds or epochs; rerun with the plain rows")
        rows = before["rows"]
    for method, (objective, view, baseline, reference) in rows_for(views, plain).items():
        for seed in seeds:
            raw = raw_recipe(None, objective, seed, epochs)
            raw["data"] = {**raw["data"], **view}
            raw["teacher"] = teacher
            raw["train"] = {**raw["train"], "select_metric": None}
            raw["baseline"] = baseline is not None
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                summary = run_recipe(
                    validate_recipe(raw), out_dir=Path(folder), progress=False, log=lambda m: None
                )
            models = summary["models"]
            for name, key in ((baseline, "baseline"), (method, "student")):
                if name is None:
                    continue
                if seed == seeds[0]:
                    rows[name] = {"accuracies": [], "seconds": [], "reference": reference}
                row = rows[name]
                row["accuracies"].append(models[key]["accuracy"])
                row["seconds"].append(models[key]["train_seconds"])
                print(
                    f"{name:55s} seed {seed}: {100 * models[key]['accuracy']:.2f}% in "
                    f"{models[key]['train_seconds']:.0f} s",
                    flush=True,
                )
            print(f"  (run {time.perf_counter() - started:.0f} s)", flush=True)
    command = (
        f"python benchmarks/function_matching.py --seeds {' '.join(map(str, seeds))} "
        f"--epochs {epochs} --views {' '.join(views)}" + ("" if plain else " --views-only")
    )
    commands = [] if plain or not earlier.exists() else before["commands"]
    results = {
        "seeds": seeds,
        "epochs": epochs,
        "teacher_accuracy": teacher_accuracy,
        "rows": rows,
        "commands": [*commands, command],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    teacher = results["teacher_accuracy"]
    seeds = ", ".join(map(str, results["seeds"]))
    lines = [
        "# Function matching on Fashion-MNIST, all labels",
        "",
        f"Teacher: the CNN of classic_kd.md ({100 * teacher:.2f}% test accuracy), loaded by "
        f"every row. Student: zoo:cnn {STUDENT['args']['channels']} + "
        f"{STUDENT['args']['hidden']}, {results['epochs']} epochs over the 54,000 labelled "
        "training images (batch 128, Adam-W, lr 0.002, cosine), measured at its last step on "
        f"the 10,000 test images; seeds {seeds}, mean ± std. Gap closed = (row − its "
        "label-only student) / (teacher − that student): KD against plain labels only, each "
        "function-matching row against labels only on the same views, with mixed labels. "
        f"Machine: {results['machine']}.",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in results["commands"]) + ".",
        "",
        "| method (all labels) | budget | test accuracy (%) | gap closed | per seed (%) "
        "| time (s) |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    rows = results["rows"]
    for name, row in rows.items():
        mean = statistics.mean(row["accuracies"])
        reference = statistics.mean(rows[row["reference"]]["accuracies"])
        gap = "" if name == row["reference"] or teacher <= reference else (
            f"{100 * (mean - reference) / (teacher - reference):.0f}%"
        )  # fmt: skip
        per_seed = ", ".join(f"{100 * a:.2f}" for a in row["accuracies"])
        lines.append(
            f"| {name} | {results['epochs']} epochs | {mean_std(row['accuracies'])} | {gap} | "
            f"{per_seed} | {statistics.mean(row['seconds']):.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--views", nargs="+", default=["cutmix"], choices=list(VIEWS))
    parser.add_argument(
        "--views-only",
        action="store_true",
        help="train only these views' rows; keep the other rows of the earlier results",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "function_matching.md")
    args = parser.parse_args()
    results = run(args.seeds, args.epochs, args.out, args.views, plain=not args.views_only)
    print(markdown(results))


if __name__ == "__main__":
    main()
