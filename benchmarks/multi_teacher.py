"""Beyond one teacher, on MNIST-1D, next to single-teacher KD: ensembles, teacher
assistants, born-again generations, an EMA (mean) teacher and mutual learning, several
seeds each, every row from a shipped recipe (``recipes/mnist1d_*.yaml``) run as
``distill run`` would, with the recipe's seed set to each seed.

Three settings, each with its own label-only row trained on the same budget:

- MLP(128, 128) student, 400 labels + a transfer set: KD from the 1-D CNN, from an
  ensemble of two CNNs (mean, confidence), from two CNNs trained on one domain each
  (digits 0-4, 5-9) and routed by it, born-again (3 generations), EMA teacher;
- MLP(32) student, 400 labels + a transfer set: KD straight from the CNN, and through an
  MLP(256, 256) teacher assistant;
- MLP(128, 128), all 3,600 training labels: two peers learning from each other (DML).

    python benchmarks/multi_teacher.py                 # 3 seeds, about 10 minutes on 2 cores
    python benchmarks/multi_teacher.py --seeds 1       # a quick look

Writes ``benchmarks/results/multi_teacher.md`` (and ``.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill.recipes import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RECIPES = ROOT.parent / "recipes"

WIDE, SMALL, ALL = "MLP(128,128), 400 labels", "MLP(32), 400 labels", "MLP(128,128), all labels"
# (setting, row, recipe, overrides, model key in the summary)
ROWS: list[tuple[str, str, str, list[str], str]] = [
    (WIDE, "(teacher: 1-D CNN)", "mnist1d_kd", [], "teacher"),
    (WIDE, "(teacher: ensemble of 2 CNNs, mean)", "mnist1d_ensemble", [], "teacher"),
    (WIDE, "(teacher: 2 CNNs, one per domain, routed)", "mnist1d_routed", [], "teacher"),
    (WIDE, "labels only", "mnist1d_kd", [], "baseline"),
    (WIDE, "KD, 1-D CNN teacher", "mnist1d_kd", [], "student"),
    (WIDE, "KD, ensemble of 2 CNNs (mean)", "mnist1d_ensemble", [], "student"),
    (WIDE, "KD, ensemble of 2 CNNs (confidence)", "mnist1d_ensemble",
     ["teacher.combine=confidence"], "student"),
    (WIDE, "KD, 2 specialised CNNs routed by domain", "mnist1d_routed", [], "student"),
    (WIDE, "born-again, generation 1", "mnist1d_born_again", [], "generation_1"),
    (WIDE, "born-again, generation 3", "mnist1d_born_again", [], "student"),
    (WIDE, "EMA (mean) teacher, no teacher", "mnist1d_mean_teacher", [], "student"),
    (SMALL, "(assistant MLP(256,256), distilled from the CNN)", "mnist1d_takd", [], "assistant"),
    (SMALL, "labels only", "mnist1d_takd", [], "baseline"),
    (SMALL, "KD straight from the CNN", "mnist1d_takd", ["assistant=null"], "student"),
    (SMALL, "KD through an MLP(256,256) assistant", "mnist1d_takd", [], "student"),
    (ALL, "labels only", "mnist1d_mutual", [], "baseline"),
    (ALL, "mutual learning, 2 peers (peer 0)", "mnist1d_mutual", [], "student"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "multi_teacher.md")
    args = parser.parse_args()
    started = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="distill-multi-teacher-")
    os.environ["DISTILL_CACHE"] = cache  # teachers trained here, shared across rows
    runs: dict[tuple[str, tuple[str, ...], int], dict] = {}
    accuracy: dict[tuple[str, str], list[float]] = {}
    for seed in range(args.seeds):
        for setting, row, recipe_name, overrides, key in ROWS:
            run_key = (recipe_name, tuple(overrides), seed)
            if run_key not in runs:
                recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", [*overrides, f"seed={seed}"])
                with tempfile.TemporaryDirectory() as out:
                    runs[run_key] = run_recipe(
                        recipe, out_dir=Path(out), progress=False, log=lambda m: None
                    )
                print(f"seed {seed} {recipe_name} {overrides} done", flush=True)
            value = runs[run_key]["models"][key]["accuracy"]
            accuracy.setdefault((setting, row), []).append(100 * value)

    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    lines = [
        "# Beyond one teacher: MNIST-1D",
        "",
        f"Test accuracy (%), mean ± std over seeds 0–{args.seeds - 1} (recipe seed: data "
        "split, teachers and students). Each setting has its own label-only row on the same "
        "budget (30 epochs of the distilled student's data); teachers: 1-D CNNs trained on "
        "all 3,600 training labels (the routed specialists: on their domain's half). "
        "Every row is a shipped recipe, "
        f"`recipes/mnist1d_*.yaml`. Machine: {machine}, torch {torch.__version__}; "
        f"{(time.perf_counter() - started) / 60:.0f} minutes in all.",
        "",
        "Command: `python benchmarks/multi_teacher.py"
        + (f" --seeds {args.seeds}`" if args.seeds != 3 else "`"),
        "",
        "| student and labels | method | test accuracy |",
        "| --- | --- | ---: |",
    ]
    for (setting, row), values in accuracy.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {setting} | {row} | {statistics.mean(values):.2f} ± {spread:.2f} |")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(
        json.dumps({f"{s} | {r}": v for (s, r), v in accuracy.items()}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
