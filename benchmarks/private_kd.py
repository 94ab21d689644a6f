"""Students trained without the training data, on real Fashion-MNIST, next to the demo's:
the label-only and distilled students of ``recipes/fashion_mnist_kd.yaml``, the data-free
students of ``recipes/fashion_mnist_data_free.yaml`` (DeepInversion inputs only) and
``recipes/fashion_mnist_data_free_generator.yaml`` (a generator, the student beside it),
and the PATE student of ``recipes/fashion_mnist_pate.yaml`` at two noise levels and with a
mean teacher on the unanswered public inputs, for each seed; on the first seed, sweeps of
PATE's answering threshold and of its number of teachers. Every recipe runs as ``distill
run`` runs it (a fresh cache per invocation, so teachers and synthetic inputs are made,
not reused). Writes ``benchmarks/results/private_kd.md`` and ``.json``; ``--rows`` measures
some rows again and keeps the others' earlier numbers (each row records the commit that
measured it).

    python benchmarks/private_kd.py                 # every row, 3 seeds: about 90 minutes
    python benchmarks/private_kd.py --rows generator pate pate_mean_teacher pate_sweep
    python benchmarks/private_kd.py --seeds 0 --rows pate_teachers   # the teacher-count sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from classic_kd import mean_std

from distill.recipes.load import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RECIPES = ROOT.parent / "recipes"
# the second PATE noise level: more noise, more queries (the first is the recipe's own)
NOISIER = ["pate.sigma=100", "pate.queries=5000", "pate.threshold=150"]


def run(recipe: str, seed: int, folder: str, changes: list[str]) -> dict:
    out = f"output.dir={folder}/seed_{seed}"
    loaded = load_recipe(RECIPES / recipe, [f"seed={seed}", out, *changes])
    started = time.perf_counter()
    summary = run_recipe(loaded, progress=False, log=lambda line: print("  ", line, flush=True))
    return {**summary, "wall_seconds": time.perf_counter() - started}


def kd_rows(seed: int, folder: str) -> dict:
    kd = run("fashion_mnist_kd.yaml", seed, folder, [])
    return {
        "teacher": kd["models"]["teacher"]["accuracy"],
        "labels_only": kd["models"]["baseline"]["accuracy"],
        "kd_real": kd["models"]["student"]["accuracy"],
        "seconds": {"kd": kd["wall_seconds"]},
    }


def data_free_row(seed: int, folder: str) -> dict:
    free = run("fashion_mnist_data_free.yaml", seed, folder, ["baseline=false"])
    return {
        "data_free": free["models"]["student"]["accuracy"],
        "data_free_synthesis_seconds": free["synthesis"]["seconds_this_run"],
        "seconds": {"data_free": free["wall_seconds"]},
    }


def generator_row(seed: int, folder: str) -> dict:
    made = run("fashion_mnist_data_free_generator.yaml", seed, folder, ["baseline=false"])
    spec = load_recipe(RECIPES / "fashion_mnist_data_free_generator.yaml").data.synthetic
    return {
        "generator": made["models"]["student"]["accuracy"],
        "generator_synthesis_seconds": made["synthesis"]["seconds_this_run"],
        "generator_examples": spec.examples,
        "seconds": {"generator": made["wall_seconds"]},
    }


def pate_row(seed: int, folder: str) -> dict:
    pate = run("fashion_mnist_pate.yaml", seed, folder, [])
    return {
        "pate": pate["models"]["student"]["accuracy"],
        "pate_votes": pate["models"]["teacher"]["accuracy"],
        "pate_privacy": pate["privacy"],
        "seconds": {"pate": pate["wall_seconds"]},
    }


def pate_2_row(seed: int, folder: str) -> dict:
    noisy = run("fashion_mnist_pate.yaml", seed, folder, ["name=fashion_mnist_pate_2", *NOISIER])
    return {"pate_2": noisy["models"]["student"]["accuracy"], "pate_2_privacy": noisy["privacy"],
            "seconds": {"pate_2": noisy["wall_seconds"]}}  # fmt: skip


def pate_mean_teacher_row(seed: int, folder: str) -> dict:
    mean = run(
        "fashion_mnist_pate.yaml", seed, folder, ["name=fashion_mnist_pate_mt", *MEAN_TEACHER]
    )
    return {
        "pate_mean_teacher": mean["models"]["student"]["accuracy"],
        "pate_mean_teacher_ema": mean["models"]["ema_teacher"]["accuracy"],
        "seconds": {"pate_mean_teacher": mean["wall_seconds"]},
    }


def pate_sweep_row(seed: int, folder: str) -> dict:
    if seed != SWEEP_SEED:
        return {}
    sweep = []
    for threshold, sigma_threshold, queries in SWEEP:
        name = f"fashion_mnist_pate_t{threshold}_s{sigma_threshold}_q{queries}"
        changes = [
            f"name={name}",
            f"pate.threshold={threshold}",
            f"pate.sigma_threshold={sigma_threshold}",
            f"pate.queries={queries}",
        ]
        made = run("fashion_mnist_pate.yaml", seed, folder, changes)
        sweep.append({"accuracy": made["models"]["student"]["accuracy"], **made["privacy"]})
    return {"pate_sweep": sweep}


def pate_teachers_row(seed: int, folder: str) -> dict:
    """The teacher count on the first seed: σ, T and σ₁ keep the recipe's ratios to it."""
    if seed != SWEEP_SEED:
        return {}
    sweep = []
    for teachers in TEACHER_COUNTS:
        changes = [
            f"name=fashion_mnist_pate_{teachers}_teachers",
            f"pate.teachers={teachers}",
            *(f"pate.{field}={ratio * teachers:g}" for field, ratio in SCALED.items()),
        ]
        made = run("fashion_mnist_pate.yaml", seed, folder, changes)
        models = made["models"]
        votes = models["teacher"]["accuracy"]
        sweep.append({"accuracy": models["student"]["accuracy"], "votes": votes, **made["privacy"]})
    return {"pate_teachers": sweep}


ROWS = {
    "kd": kd_rows,
    "data_free": data_free_row,
    "generator": generator_row,
    "pate": pate_row,
    "pate_2": pate_2_row,
    "pate_mean_teacher": pate_mean_teacher_row,
    "pate_sweep": pate_sweep_row,
    "pate_teachers": pate_teachers_row,
}
MEAN_TEACHER = ["pate.unanswered=mean_teacher", "objective.consistency={loss: kl, weight: 1.0}"]
SWEEP_SEED = 0
FIRST_ROWS, FIRST_COMMIT = ("kd", "data_free", "pate", "pate_2"), "fc82c82"  # issue 20's run
SWEEP = [(180, 150, 2000), (220, 150, 2000), (200, 200, 3000), (230, 200, 4000)]
TEACHER_COUNTS = [50, 100, 500]  # beside the recipe's 250
SCALED = {"sigma": 40 / 250, "threshold": 200 / 250, "sigma_threshold": 150 / 250}


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def one_seed(seed: int, folder: str, rows: list[str], earlier: dict) -> dict:
    result = {"seed": seed, **earlier}
    result.setdefault("seconds", {})
    result.setdefault("measured_at", {})
    for name in rows:
        made = ROWS[name](seed, folder)
        result["seconds"].update(made.pop("seconds", {}))
        result.update(made)
        result["measured_at"][name] = commit()
    return result


def table(results: list[dict]) -> str:
    get = lambda key: [r[key] for r in results if key in r]  # noqa: E731
    privacy = lambda key, field: [r[key][field] for r in results if field in r.get(key, {})]  # noqa: E731
    first = results[0]
    p1, p2 = first["pate_privacy"], first["pate_2_privacy"]
    ratio = [r["generator"] / r["kd_real"] for r in results if "generator" in r]
    above = [r["generator"] - r["labels_only"] for r in results if "generator" in r]
    di_rate = [
        4096 / r["data_free_synthesis_seconds"]
        for r in results
        if r.get("data_free_synthesis_seconds")
    ]
    gen_rate = [r["generator_examples"] / r["generator_synthesis_seconds"] for r in results
                if "generator" in r]  # fmt: skip
    dependent = lambda key: privacy(key, "epsilon_data_dependent")  # noqa: E731
    lines = [
        "# Students trained without the training data, Fashion-MNIST",
        "",
        f"`python benchmarks/private_kd.py`: seeds {', '.join(str(r['seed']) for r in results)}; "
        "mean ± standard deviation over the seeds of the test accuracy (10,000 test images). "
        "Each recipe runs as `distill run` runs it, with a fresh cache: the teachers and the "
        "synthetic inputs are made in the run. Student: the demo's 784-64-10 MLP (51k "
        "parameters) everywhere. The data-free and PATE students are the last step's (no "
        "selection on validation labels). "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. Rows were measured at the commits in the per-seed table's "
        "last column (`--rows` measures some again and keeps the others).",
        "",
        "| student trained on | real training images seen by the student | test acc. (%) "
        "| ε, data-independent bound | ε, data-dependent analysis |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| labels only, 2,000 labels | 2,000 | {mean_std(get('labels_only'))} | — | — |",
        f"| KD on the real transfer set (today's demo) | 60,000 | {mean_std(get('kd_real'))} "
        "| — | — |",
        "| KD on DeepInversion images only (4,096 synthetic) | 0 | "
        f"{mean_std(get('data_free'))} | — | — |",
    ]
    if ratio:
        examples = first["generator_examples"]
        lines.append(
            f"| a generator, the student beside it ({examples:,} synthetic kept) | 0 | "
            f"{mean_std(get('generator'))} | — | — |"
        )
    lines.append(
        f"| PATE, {p1['teachers']} teachers, σ {p1['sigma']:g}: "
        f"{mean_std(privacy('pate_privacy', 'answered'), 1, 0)} of {p1['queries']:,} queries "
        f"answered | 0 private ({p1['queries']:,} public, labels hidden) | "
        f"{mean_std(get('pate'))} | {mean_std(privacy('pate_privacy', 'epsilon'), 1)} | "
        + (f"{mean_std(dependent('pate_privacy'), 1)} |" if dependent("pate_privacy") else "— |")
    )
    if get("pate_mean_teacher"):
        lines.append(
            "| the same answers, and a mean teacher on all 10,000 public inputs | 0 private "
            f"(10,000 public, labels hidden) | {mean_std(get('pate_mean_teacher'))} | "
            f"{mean_std(privacy('pate_privacy', 'epsilon'), 1)} | "
            f"{mean_std(dependent('pate_privacy'), 1)} |"
        )
    lines += [
        f"| PATE, {p2['teachers']} teachers, σ {p2['sigma']:g}: "
        f"{mean_std(privacy('pate_2_privacy', 'answered'), 1, 0)} of {p2['queries']:,} queries "
        f"answered | 0 private ({p2['queries']:,} public, labels hidden) | "
        f"{mean_std(get('pate_2'))} | {mean_std(privacy('pate_2_privacy', 'epsilon'), 1)} "
        "| not measured |",
        "",
        f"The teacher (the demo's CNN) reaches {mean_std(get('teacher'))}%.",
    ]
    if ratio:
        lines += [
            "",
            f"**Data-free.** The generator's student reaches {mean_std(ratio)}% of the accuracy "
            f"of KD on the real transfer set (lowest seed {100 * min(ratio):.1f}%; the goal: "
            "at least 95% on every seed) and is "
            + (
                f"{mean_std(above)} points above"
                if min(above) > 0
                else f"{mean_std([-a for a in above])} points below"
            )
            + " the label-only student (the goal: above it). Its synthesis (the generator's "
            f"rounds with the student's steps beside it) makes {mean_std(gen_rate, 1, 0)} "
            "kept images per second"
            + (
                f"; DeepInversion {mean_std(di_rate, 1, 1)} images per second, measured in "
                "the same benchmark: "
                f"{statistics.mean(gen_rate) / statistics.mean(di_rate):.1f}× as many (the goal: "
                "10× at the accuracy of DeepInversion's student or better)"
                if di_rate
                else ""
            )
            + ".",
        ]
    lines += [
        "",
        "**PATE.** The 250 teachers' plain (noiseless) vote reaches "
        f"{mean_std(get('pate_votes'))}% on the test images; "
        f"{mean_std(privacy('pate_privacy', 'answer_accuracy'))}% (σ {p1['sigma']:g}) and "
        f"{mean_std(privacy('pate_2_privacy', 'answer_accuracy'))}% (σ {p2['sigma']:g}) of the "
        "answers the students learned from are the true class. Confident-GNMax thresholds "
        f"{p1['threshold']:g} and {p2['threshold']:g} (σ₁ {p1['sigma_threshold']:g}). The "
        "data-independent ε is the RDP bound (Opacus), GNMax with L2 sensitivity √2 composed "
        "over the answered queries plus the threshold check on every query. The "
        "data-dependent ε is the analysis of the run's own votes (Papernot et al. 2018), "
        "not released through smooth sensitivity, so it is the run's analysis, not a "
        "published guarantee. Both protect the private training rows the teachers were "
        "trained on, not the public images the student saw.",
    ]
    sweep = first.get("pate_sweep")
    if sweep:
        lines += [
            "",
            f"Answering threshold sweep, seed {SWEEP_SEED}, 250 teachers, σ 40 (the "
            "recipe's own setting is threshold 200, σ₁ 150, 2,000 queries):",
            "",
            "| threshold | σ₁ | queries | answered | answers right (%) | student acc. (%) "
            "| ε, data-independent | ε, data-dependent |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in sweep:
            lines.append(
                f"| {row['threshold']:g} | {row['sigma_threshold']:g} | {row['queries']:,} "
                f"| {row['answered']:,} | {100 * row['answer_accuracy']:.1f} "
                f"| {100 * row['accuracy']:.2f} | {row['epsilon']:.2f} "
                f"| {row['epsilon_data_dependent']:.2f} |"
            )
    counts = first.get("pate_teachers")
    if counts:
        lines += [
            "",
            f"Teacher-count sweep, seed {SWEEP_SEED}: the private rows split among more or "
            "fewer teachers, σ, the threshold and σ₁ scaled with the count (the recipe's "
            "40, 200 and 150 for 250 teachers), 2,000 queries:",
            "",
            "| teachers | private rows each | σ | threshold | σ₁ | plain vote (%) | answered "
            "| answers right (%) | student acc. (%) | ε, data-independent "
            "| ε, data-dependent |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        reference = {**p1, "accuracy": first["pate"], "votes": first["pate_votes"]}
        for row in sorted([*counts, reference], key=lambda r: r["teachers"]):
            lines.append(
                f"| {row['teachers']} | {44_000 // row['teachers']:,} | {row['sigma']:g} "
                f"| {row['threshold']:g} | {row['sigma_threshold']:g} "
                f"| {100 * row['votes']:.2f} | {row['answered']:,} "
                f"| {100 * row['answer_accuracy']:.1f} | {100 * row['accuracy']:.2f} "
                f"| {row['epsilon']:.2f} | {row['epsilon_data_dependent']:.2f} |"
            )
    lines += [
        "",
        "| seed | teacher | labels only | KD, real transfer set | DeepInversion | generator "
        f"| PATE σ {p1['sigma']:g} (ε; data-dependent) | PATE, mean teacher "
        f"| PATE σ {p2['sigma']:g} (ε) | minutes per row | measured at |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    pct = lambda r, key: f"{100 * r[key]:.2f}" if key in r else "—"  # noqa: E731
    for r in results:
        minutes = ", ".join(f"{k} {s / 60:.1f}" for k, s in r["seconds"].items())
        dep = r["pate_privacy"].get("epsilon_data_dependent")
        at = {**dict.fromkeys(FIRST_ROWS, FIRST_COMMIT), **r.get("measured_at", {})}
        measured = ", ".join(f"{k} {c}" for k, c in at.items())
        lines.append(
            f"| {r['seed']} | {pct(r, 'teacher')} | {pct(r, 'labels_only')} "
            f"| {pct(r, 'kd_real')} | {pct(r, 'data_free')} | {pct(r, 'generator')} "
            f"| {pct(r, 'pate')} ({r['pate_privacy']['epsilon']:.2f}"
            + (f"; {dep:.2f}" if dep is not None else "")
            + f") | {pct(r, 'pate_mean_teacher')} "
            f"| {pct(r, 'pate_2')} ({r['pate_2_privacy']['epsilon']:.2f}) | {minutes} "
            f"| {measured} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "private_kd.md")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the table from the saved .json"
    )
    args = parser.parse_args()
    if args.table_only:
        args.out.write_text(table(json.loads(args.out.with_suffix(".json").read_text())))
        return
    saved = args.out.with_suffix(".json")
    earlier = {r["seed"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    done: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DISTILL_CACHE"] = str(Path(folder) / "cache")
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            done[seed] = one_seed(seed, folder, args.rows, earlier.get(seed, {}))
            results = [done.get(s, earlier.get(s)) for s in sorted(set(earlier) | set(done))]
            saved.write_text(json.dumps(results, indent=2))
    text = table(results)  # every seed measured, now or before
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
