"""`distill demo` on seeds 0, 1, 2, each a first run (a fresh teacher store, so the teacher
is trained), as a new user on this machine would see it: test accuracy of the teacher, the
label-only and the distilled student, and the wall time of the whole command.

    python benchmarks/demo.py                # about 6 minutes on 2 CPU cores, alone
    python benchmarks/demo.py --seeds 0      # one seed

    python benchmarks/demo.py --render       # demo.md again from demo.json, no run

Writes ``benchmarks/results/demo.json`` and ``demo.md``; ``python
benchmarks/readme_tables.py`` puts the table into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "demo.json"
TABLE = RESULTS.with_suffix(".md")


def run_seed(seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DISTILL_CACHE": str(Path(tmp) / "cache")}
        command = [sys.executable, "-m", "distill", "demo", "--seed", str(seed), "--json"]
        command += ["--out", str(Path(tmp) / "run")]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    summary = json.loads(done.stdout)
    models = summary["models"]
    return {
        "seed": seed,
        "dataset": summary["dataset"],
        "seconds": seconds,
        **{
            f"{row}_accuracy": models[row]["accuracy"] for row in ("teacher", "baseline", "student")
        },
        "teacher_parameters": models["teacher"]["parameters"],
        "student_parameters": models["student"]["parameters"],
        "steps": summary["steps"],
    }


def render(results: dict) -> str:
    """demo.md: the table the README shows, from demo.json."""
    runs = results["runs"]
    first = runs[0]
    teacher_k = round(first["teacher_parameters"] / 1000)
    student_k = round(first["student_parameters"] / 1000)
    lines = [
        "# `distill demo`, first runs",
        "",
        f"Dataset: {first['dataset']}; {first['steps']:,} steps for each student; the teacher "
        "trained in every run (a fresh teacher store). Test accuracy on the test split; time: "
        f"the whole command, wall clock. Machine: {results['machine']}.",
        "",
        "Command: `python benchmarks/demo.py`",
        "",
        f"| seed | teacher (CNN, {teacher_k}k params) | student, labels only (MLP, "
        f"{student_k}k) | student, distilled (MLP, {student_k}k) | first run |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run['seed']} | {100 * run['teacher_accuracy']:.2f}% | "
            f"{100 * run['baseline_accuracy']:.2f}% | {100 * run['student_accuracy']:.2f}% | "
            f"{run['seconds']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--render", action="store_true", help="demo.md from demo.json only")
    args = parser.parse_args()
    if args.render:
        TABLE.write_text(render(json.loads(RESULTS.read_text())))
        return
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed))
        row = rows[-1]
        print(
            f"seed {seed}: teacher {100 * row['teacher_accuracy']:.2f}%, labels only "
            f"{100 * row['baseline_accuracy']:.2f}%, distilled {100 * row['student_accuracy']:.2f}%"
            f" in {row['seconds']:.0f} s",
            flush=True,
        )
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    results = {"machine": machine, "runs": rows}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    TABLE.write_text(render(results))
    print(f"written: {RESULTS}, {TABLE}")


if __name__ == "__main__":
    main()
