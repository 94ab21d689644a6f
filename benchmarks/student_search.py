"""Student search on real Fashion-MNIST: ``distill search recipes/fashion_mnist_search.yaml``
(TPE under "CPU latency per example <= the demo MLP's, measured here"), against random
search with the same number of trials, each chosen student then distilled fully with 3
seeds next to the recipe's hand-picked student. Writes
``benchmarks/results/student_search.md`` and the TPE search's Pareto plot. ``--recipe``
searches another recipe; one budgeted in ONNX Runtime latency has its final students timed
in ONNX Runtime too (float and int8), and the goal judged there.

    python benchmarks/student_search.py                # batch-1 latency, 60 trials each
    python benchmarks/student_search.py --batch 256 --out benchmarks/results/student_search_b256.md
    python benchmarks/student_search.py --recipe recipes/fashion_mnist_search_cnn.yaml \
        --trials 30 --out benchmarks/results/student_search_cnn.md

Run it alone: the budget and every trial are timed on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from distill.measure import cpu_latency
from distill.recipes import ModelSpec, load_recipe
from distill.runs.search import space
from distill.runs.search.final import FINAL_DIR
from distill.runs.search.run import Options, search_recipe
from distill.runs.search.space import describe
from distill.runs.table import task_for
from distill.training import checkpoint as ckpt

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "fashion_mnist_search.yaml"
SEEDS = [0, 1, 2]


def search(sampler: str, trials: int, out: Path, compare: bool, extra: list[str]) -> dict:
    recipe = load_recipe(
        RECIPE,  # the --recipe given
        [f"search.sampler={sampler}", f"search.seeds={SEEDS}", f"search.compare={compare}", *extra],
    )
    started = time.perf_counter()
    summary = search_recipe(
        recipe, out_dir=out / sampler, options=Options(trials=trials, progress=False), log=print
    )
    return {**summary, "minutes": (time.perf_counter() - started) / 60}


def timed_together(
    rows: dict[str, tuple[dict, Path]], batch: int, repeats: int = 200, rounds: int = 5
):
    """Every final student (seed 0) timed in turns, ``rounds`` times, in this one process:
    the median of the rounds' medians, so no row ran on a busier machine."""
    recipe = load_recipe(RECIPE)
    task = task_for(recipe)
    task.prepare(False, lambda _: None)
    models = {}
    for row, (student, folder) in rows.items():
        torch.manual_seed(0)
        model = task.build_student(ModelSpec(**student), None)
        ckpt.load_weights(model, folder / ckpt.STUDENT_FILE)
        models[row] = model.eval()
    example, _ = task.latency_input(next(iter(models.values())))
    onnx = bool(recipe.search.budget.in_onnx_runtime())
    medians: dict[str, dict[str, list[float]]] = {row: {} for row in models}
    for _ in range(rounds):
        for row, model in models.items():
            seen = {"latency_ms": cpu_latency(model, example, repeats, batch=batch)["latency_ms"]}
            if onnx:  # exported and timed in ONNX Runtime, float and int8
                seen.update(space.onnx_latencies(model, example, repeats, batch))
            for name, value in seen.items():
                medians[row].setdefault(name, []).append(value)
    return {
        row: {name: statistics.median(values) for name, values in by_name.items()}
        for row, by_name in medians.items()
    }


def counts(summary: dict) -> str:
    rows = summary["trials"]
    over = sum("over_budget" in r for r in rows)
    trained = sum(r["state"] == "complete" for r in rows)
    stopped = sum(r["state"] == "pruned" for r in rows) - over
    return f"{len(rows)} trials: {trained} trained, {over} over the budget, {stopped} pruned"


def verdict(difference: float, first: dict, second: dict) -> str:
    """Better, worse, or within the seeds' spread (the larger of the two std's)."""
    spread = max(
        first["final"]["searched"]["accuracy_std"], second["final"]["searched"]["accuracy_std"]
    )
    if abs(difference) <= spread:
        return f"within the seeds' spread of {100 * spread:.2f}: not better"
    return "TPE better" if difference > 0 else "TPE worse"


def scored_by(metric: str) -> str:
    if metric.startswith("heldout_"):
        return f"{metric} on 5,000 transfer inputs held out of every trial (search.holdout)"
    return f"{metric} on the 200 validation images"


def table(tpe: dict, random: dict, latency: dict, trials: int, plot_name: str, recipe: str) -> str:
    latency = {  # results saved before ONNX Runtime timings: CPU latency only
        row: value if isinstance(value, dict) else {"latency_ms": value}
        for row, value in latency.items()
    }
    (limit, budget), *_ = tpe["budget"].items()
    batch = tpe["batch_size"]
    out = f"benchmarks/results/{Path(plot_name).stem.removesuffix('_pareto')}.md"
    default = recipe == "recipes/fashion_mnist_search.yaml"
    flag = ("" if default else f" --recipe {recipe} --trials {trials}") + (
        "" if batch == 1 and default else f"{'' if batch == 1 else f' --batch {batch}'} --out {out}"
    )
    setting = "" if batch == 1 else f" --set search.budget.batch_size={batch}"
    finals = {
        "hand-picked (recipe)": tpe["final"]["hand_picked"],
        f"best of random search, {trials} trials": random["final"]["searched"],
        f"best of TPE, {trials} trials": tpe["final"]["searched"],
    }
    keys = ["hand_picked", "random", "tpe"]
    shown = [name for name in ("latency_ms", *space.ONNX) if name in latency["tpe"]]
    hand_picked = describe(tpe["final"]["hand_picked"]["student"])
    lines = [
        "# Student search on Fashion-MNIST",
        "",
        f"`python benchmarks/student_search.py{flag}`: `distill search {recipe}{setting}` "
        "with TPE, and again with `--set search.sampler=random`, the same number of trials. "
        "The demo's CNN teacher and transfer-set setting (2,000 labels; the teacher labels "
        f"the other training images). Budget: {space.MEASURES[limit]} (median; batch "
        f"{batch}) no more than the recipe's hand-picked `{hand_picked}`, measured at "
        f"the start: {budget:.4g} ms. "
        "Each trial: built, measured, over-budget ones pruned without training; the others "
        f"distilled for 1 epoch and scored by {scored_by(tpe['metric'])}, "
        "with the median pruner. The chosen student of each search, and the hand-picked one, then "
        f"distilled with the recipe's budget (5 epochs) for seeds {SEEDS}; test accuracy on "
        "the 10,000 test images. Latency: the three seed-0 students timed in turns in one "
        f"process (5 rounds of 200 forwards, median). {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        "| student | params | "
        + " | ".join(space.MEASURES[name] for name in shown)
        + " | test acc. (mean ± std) |",
        "| --- | ---: | " + "---: | " * len(shown) + "---: |",
    ]
    for (label, result), key in zip(finals.items(), keys, strict=True):
        lines.append(
            f"| {label}: `{describe(result['student'])}` | {result['parameters']:,} | "
            + " | ".join(f"{latency[key][name]:.4g}" for name in shown)
            + f" | {100 * result['accuracy']:.2f} ± {100 * result['accuracy_std']:.2f} |"
        )
    hand = tpe["final"]["hand_picked"]
    found = tpe["final"]["searched"]
    gains = [s - h for s, h in zip(found["accuracy_per_seed"], hand["accuracy_per_seed"],
                                   strict=True)]  # fmt: skip
    versus_random = found["accuracy"] - random["final"]["searched"]["accuracy"]
    ratio = latency["tpe"][limit] / latency["hand_picked"][limit]
    met = min(gains) >= 0.01 and ratio <= 1
    lines += [
        "",
        f"- TPE: {counts(tpe)} ({tpe['minutes']:.0f} min with its full runs). "
        f"Random: {counts(random)} ({random['minutes']:.0f} min).",
        f"- Searched student vs hand-picked: {100 * (found['accuracy'] - hand['accuracy']):+.2f} "
        f"points of test accuracy (per seed {', '.join(f'{100 * g:+.2f}' for g in gains)}) at "
        f"{ratio:.2f}× its {space.MEASURES[limit]}; goal +1 point on every seed at no more "
        f"latency: {'met' if met else 'not met'}.",
        f"- TPE vs random search with the same trials: {100 * versus_random:+.2f} points "
        f"({verdict(versus_random, tpe, random)}).",
        "",
        f"![TPE search: validation metric vs latency]({plot_name})",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    global RECIPE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe searched")
    parser.add_argument(
        "--work", type=Path, default=None, help="default runs/bench_search_b<batch>"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "student_search.md")
    parser.add_argument("--batch", type=int, default=1, help="examples per timed forward")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a smoke test")
    parser.add_argument("--render", action="store_true", help="rewrite --out from its .json")
    args = parser.parse_args()
    RECIPE = args.recipe.resolve()
    shown = str(RECIPE.relative_to(ROOT.parent))
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        trials = len(saved["tpe"]["trials"])
        plot = args.out.stem + "_pareto.png"
        text = table(saved["tpe"], saved["random"], saved["latency_ms"], trials, plot, shown)
        args.out.write_text(text)
        return
    args.extra.append(f"search.budget.batch_size={args.batch}")
    args.work = args.work or Path("runs") / f"bench_search_b{args.batch}"
    tpe = search("tpe", args.trials, args.work, compare=True, extra=args.extra)
    random = search("random", args.trials, args.work, compare=False, extra=args.extra)
    folders = {
        "hand_picked": (tpe["final"]["hand_picked"]["student"], args.work / "tpe"),
        "random": (random["final"]["searched"]["student"], args.work / "random"),
        "tpe": (tpe["final"]["searched"]["student"], args.work / "tpe"),
    }
    row_of = {"hand_picked": "hand_picked", "random": "searched", "tpe": "searched"}
    latency = timed_together(
        {
            key: (student, folder / FINAL_DIR / row_of[key] / f"seed_{SEEDS[0]}")
            for key, (student, folder) in folders.items()
        },
        args.batch,
    )
    text = table(tpe, random, latency, args.trials, args.out.stem + "_pareto.png", shown)
    args.out.write_text(text)
    plot = args.out.with_name(args.out.stem + "_pareto.png")
    shutil.copy(args.work / "tpe" / "pareto.png", plot)
    (args.out.with_suffix(".json")).write_text(
        json.dumps({"tpe": tpe, "random": random, "latency_ms": latency}, indent=2)
    )
    print(text)


if __name__ == "__main__":
    main()
