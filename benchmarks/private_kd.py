"""Students trained without the training data, on real Fashion-MNIST, next to the demo's:
the label-only and distilled students of ``recipes/fashion_mnist_kd.yaml``, the data-free
student of ``recipes/fashion_mnist_data_free.yaml`` (DeepInversion inputs only) and the
PATE student of ``recipes/fashion_mnist_pate.yaml`` at two noise levels, for each seed,
every recipe run as ``distill run`` runs it (a fresh cache, so teachers and synthetic
inputs are made, not reused). Writes ``benchmarks/results/private_kd.md`` and ``.json``.

    python benchmarks/private_kd.py                 # 3 seeds, about 40 minutes on 2 cores
    python benchmarks/private_kd.py --seeds 0       # one seed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def one_seed(seed: int, folder: str) -> dict:
    kd = run("fashion_mnist_kd.yaml", seed, folder, [])
    free = run("fashion_mnist_data_free.yaml", seed, folder, ["baseline=false"])
    pate = run("fashion_mnist_pate.yaml", seed, folder, [])
    noisy = run("fashion_mnist_pate.yaml", seed, folder, ["name=fashion_mnist_pate_2", *NOISIER])
    return {
        "seed": seed,
        "teacher": kd["models"]["teacher"]["accuracy"],
        "labels_only": kd["models"]["baseline"]["accuracy"],
        "kd_real": kd["models"]["student"]["accuracy"],
        "data_free": free["models"]["student"]["accuracy"],
        "pate": pate["models"]["student"]["accuracy"],
        "pate_votes": pate["models"]["teacher"]["accuracy"],
        "pate_privacy": pate["privacy"],
        "pate_2": noisy["models"]["student"]["accuracy"],
        "pate_2_privacy": noisy["privacy"],
        "seconds": {
            "kd": kd["wall_seconds"],
            "data_free": free["wall_seconds"],
            "pate": pate["wall_seconds"],
            "pate_2": noisy["wall_seconds"],
        },
        "regimes": {"data_free": free["regime"], "pate": pate["regime"]},
    }


def table(results: list[dict]) -> str:
    get = lambda key: [r[key] for r in results]  # noqa: E731
    privacy = lambda key, field: [r[key][field] for r in results]  # noqa: E731
    first = results[0]
    p1, p2 = first["pate_privacy"], first["pate_2_privacy"]
    recovered = [
        (r["data_free"] - r["labels_only"]) / (r["kd_real"] - r["labels_only"]) for r in results
    ]
    ratio = [r["data_free"] / r["kd_real"] for r in results]
    behind = [r["labels_only"] - r["data_free"] for r in results]
    gain = (
        f"recovers {mean_std(recovered)}% of KD's gain over the label-only student"
        if min(recovered) >= 0
        else f"is {mean_std(behind)} points below the label-only student (2,000 real labels), "
        "so it recovers none of KD's gain over it"
    )
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
        f"{torch.__version__}.",
        "",
        "| student trained on | real training images seen by the student | test acc. (%) "
        "| ε (δ = 1e-5) |",
        "| --- | --- | ---: | ---: |",
        f"| labels only, 2,000 labels | 2,000 | {mean_std(get('labels_only'))} | — |",
        f"| KD on the real transfer set (today's demo) | 60,000 | {mean_std(get('kd_real'))} | — |",
        "| KD on DeepInversion images only (4,096 synthetic) | 0 | "
        f"{mean_std(get('data_free'))} | — |",
        f"| PATE, {p1['teachers']} teachers, σ {p1['sigma']:g}: "
        f"{mean_std(privacy('pate_privacy', 'answered'), 1, 0)} of {p1['queries']:,} queries "
        f"answered | 0 private ({p1['queries']:,} public, labels hidden) | "
        f"{mean_std(get('pate'))} | {mean_std(privacy('pate_privacy', 'epsilon'), 1)} |",
        f"| PATE, {p2['teachers']} teachers, σ {p2['sigma']:g}: "
        f"{mean_std(privacy('pate_2_privacy', 'answered'), 1, 0)} of {p2['queries']:,} queries "
        f"answered | 0 private ({p2['queries']:,} public, labels hidden) | "
        f"{mean_std(get('pate_2'))} | {mean_std(privacy('pate_2_privacy', 'epsilon'), 1)} |",
        "",
        f"The teacher (the demo's CNN) reaches {mean_std(get('teacher'))}%. The data-free student "
        f"reaches {mean_std(ratio)}% of the accuracy of KD on the real transfer set, and "
        f"{gain} (the goal: at least 80% of that gain).",
        "",
        "PATE: the 250 teachers' plain (noiseless) vote reaches "
        f"{mean_std(get('pate_votes'))}% on the test images; "
        f"{mean_std(privacy('pate_privacy', 'answer_accuracy'))}% (σ {p1['sigma']:g}) and "
        f"{mean_std(privacy('pate_2_privacy', 'answer_accuracy'))}% (σ {p2['sigma']:g}) of the "
        "answers the students learned from are the true class. Confident-GNMax thresholds "
        f"{p1['threshold']:g} and {p2['threshold']:g} (σ₁ {p1['sigma_threshold']:g}). ε is the "
        "data-independent RDP bound (Opacus), GNMax with L2 sensitivity √2 composed over the "
        "answered queries plus the threshold check on every query; it protects the private "
        "training rows the teachers were trained on, not the public images the student saw.",
        "",
        "| seed | teacher | labels only | KD, real transfer set | data-free | PATE σ "
        f"{p1['sigma']:g} (ε) | PATE σ {p2['sigma']:g} (ε) | minutes (kd, data-free, PATE, "
        "PATE 2) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        minutes = ", ".join(f"{s / 60:.1f}" for s in r["seconds"].values())
        lines.append(
            f"| {r['seed']} | {100 * r['teacher']:.2f} | {100 * r['labels_only']:.2f} "
            f"| {100 * r['kd_real']:.2f} | {100 * r['data_free']:.2f} "
            f"| {100 * r['pate']:.2f} ({r['pate_privacy']['epsilon']:.2f}) "
            f"| {100 * r['pate_2']:.2f} ({r['pate_2_privacy']['epsilon']:.2f}) | {minutes} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "private_kd.md")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite the table from the saved .json"
    )
    args = parser.parse_args()
    if args.table_only:
        args.out.write_text(table(json.loads(args.out.with_suffix(".json").read_text())))
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DISTILL_CACHE"] = str(Path(folder) / "cache")
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            results.append(one_seed(seed, folder))
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = table(results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
