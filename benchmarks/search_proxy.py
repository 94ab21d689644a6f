"""Which short-training proxy ranks students like full training does? The check behind
``search.metric``: about 20 candidates drawn at random from the CNN family of
``recipes/fashion_mnist_search_cnn.yaml`` are each distilled twice, as a search trial
(``search.train``: 1 epoch) and as the recipe's full run (5 epochs, as ``distill run``
runs it); each proxy of the short run is then compared with the full run's test accuracy
by Kendall's τ (1: the same order; 0: unrelated). Proxies, all measured on the short run:

- ``val_loss`` / ``val_accuracy``: on the 200 labelled validation images (today's trial
  score, and the accuracy beside it); ``half_val_loss`` the same after half the short run
  (the first rung of successive halving with two rungs);
- ``heldout_kl`` / ``heldout_agreement``: KL(teacher ‖ student) and top-1 agreement with
  the teacher on ``--heldout`` transfer inputs the short run does not train on (no labels
  needed, so as many as one likes).

Writes ``benchmarks/results/search_proxy.md`` and ``.json``; a killed run continues with
the candidates it has not finished.

    python benchmarks/search_proxy.py                 # 20 candidates: about an hour here
    python benchmarks/search_proxy.py --candidates 4 --full-epochs 1   # a quick look
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

import optuna
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from torch.utils.data import DataLoader, Subset

from distill.models import build_model
from distill.recipes.load import load_recipe
from distill.runs import run_recipe
from distill.runs.fitting import fit_student, recipe_objective, steps_per_epoch, teacher_module
from distill.runs.search import space
from distill.runs.table import task_for
from distill.runs.task import loader

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "fashion_mnist_search_cnn.yaml"
PROXIES = {  # name: (what it is, higher is better)
    "val_loss": ("validation loss, 200 images", False),
    "val_accuracy": ("validation accuracy, 200 images", True),
    "half_val_loss": ("validation loss, 200 images, after half the short run", False),
    "heldout_kl": ("KL to the teacher, held-out transfer inputs", False),
    "heldout_agreement": ("agreement with the teacher, held-out transfer inputs", True),
}


def draw(count: int, seed: int) -> list[dict]:
    """``count`` distinct candidates of the recipe's family, drawn at random (Optuna's
    random sampler over the same space ``distill search`` samples)."""
    candidates = load_recipe(RECIPE).search.candidates
    families = space.labels(candidates)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn: list[dict] = []
    while len(drawn) < count:
        trial = study.ask()
        student = space.suggest(trial, candidates, families)
        study.tell(trial, 0.0)
        try:
            build_model(student["model"], 10, (1, 28, 28), student["args"])
        except (TypeError, ValueError):
            continue  # a point of the space that does not exist (too many stages)
        if student not in drawn:
            drawn.append(student)
    return drawn


@torch.no_grad()
def teacher_agreement(student, teacher, rows) -> dict[str, float]:
    """KL(teacher ‖ student) per example at T = 1, and top-1 agreement, over ``rows``."""
    student.eval()
    kl, agree, seen = 0.0, 0, 0
    for x, *_ in DataLoader(rows, batch_size=1000):
        s, t = student(x), teacher(x)
        kl += float(F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True,
                             reduction="sum"))  # fmt: skip
        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
        seen += len(x)
    return {"heldout_kl": kl / seen, "heldout_agreement": agree / seen}


def short_run(task, recipe, teacher, student, folder: Path, heldout: int) -> dict:
    """The search's trial for ``student``, with ``heldout`` transfer inputs kept out of
    its training; every proxy measured on it."""
    raw = recipe.model_dump(mode="json")
    # the last weights, as a trial is scored: every proxy reads the same model
    raw["train"] = {**raw["train"], **recipe.search.train, "select_metric": None}
    short = load_recipe_from(raw)
    rows = task.data.student_train
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    kept, out = Subset(rows, order[heldout:].tolist()), Subset(rows, order[:heldout].tolist())
    per_epoch = steps_per_epoch(kept, short)
    torch.manual_seed(recipe.seed)
    model = build_model(student["model"], 10, (1, 28, 28), student["args"])
    started = time.perf_counter()
    _, result, _ = fit_student(
        short, model, teacher_module(short, teacher),
        recipe_objective(short, per_epoch, teacher)(model),
        run_dir=folder, train_loader=loader(kept, short, True),
        val_loader=loader(task.data.val, short, False), max_steps=per_epoch,
        eval_every=per_epoch // 2, progress=False, log=lambda _: None,
    )  # fmt: skip
    half, last = result.evaluations[0], result.evaluations[-1]
    return {
        "val_loss": last["loss"],
        "half_val_loss": half["loss"],
        "val_accuracy": last["accuracy"],
        **teacher_agreement(model, teacher.eval(), out),
        "short_seconds": time.perf_counter() - started,
    }


def load_recipe_from(raw: dict):
    from distill.recipes import validate_recipe

    return validate_recipe(raw, "search.train")


def full_run(student: dict, folder: Path, epochs: int | None) -> dict:
    changes = [*space.overrides(student), "baseline=false", f"output.dir={folder}"]
    if epochs is not None:
        changes.append(f"train.epochs={epochs}")
    started = time.perf_counter()
    summary = run_recipe(load_recipe(RECIPE, changes), progress=False, log=lambda _: None)
    tested = summary["models"]["student"]
    return {"test_accuracy": tested["accuracy"], "parameters": tested["parameters"],
            "full_seconds": time.perf_counter() - started}  # fmt: skip


def best_half(rows: list[dict]) -> list[dict]:
    """The better half by the full run: the candidates a search must tell apart."""
    return sorted(rows, key=lambda r: -r["test_accuracy"])[: max(2, len(rows) // 2)]


def tau(rows: list[dict], proxy: str) -> float:
    higher = PROXIES[proxy][1]
    values = [r[proxy] if higher else -r[proxy] for r in rows]
    return float(kendalltau(values, [r["test_accuracy"] for r in rows]).statistic)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Which search proxy ranks like full training (Fashion-MNIST, CNN family)",
        "",
        f"`python benchmarks/search_proxy.py --candidates {args.candidates}"
        + (f" --full-epochs {args.full_epochs}" if args.full_epochs else "")
        + f"`: {len(rows)} candidates drawn at random from the CNN family of "
        "`recipes/fashion_mnist_search_cnn.yaml`, each distilled as a search trial (1 epoch, "
        f"{args.heldout:,} transfer inputs held out) and as the recipe's full run "
        f"({args.full_epochs or 5} epoch{'s' if args.full_epochs != 1 else ''}, test "
        "accuracy on 10,000 images). Kendall's τ of "
        "each proxy against the full run's test accuracy (1: the same order). "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}.",
        "",
        f"| proxy (short run) | Kendall τ, all {len(rows)} | τ, the better half "
        f"({len(best_half(rows))}) |",
        "| --- | ---: | ---: |",
    ]
    for proxy, (what, _) in PROXIES.items():
        lines.append(
            f"| `{proxy}`: {what} | {tau(rows, proxy):+.2f} | {tau(best_half(rows), proxy):+.2f} |"
        )
    lines += [
        "",
        "| candidate | parameters | val loss | val loss, half | val acc. (%) | held-out KL "
        "| held-out agreement (%) | full test acc. (%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: -r["test_accuracy"]):
        lines.append(
            f"| `{space.describe(r['student'])}` | {r['parameters']:,} | {r['val_loss']:.4f} "
            f"| {r['half_val_loss']:.4f} | {100 * r['val_accuracy']:.1f} "
            f"| {r['heldout_kl']:.4f} | {100 * r['heldout_agreement']:.2f} "
            f"| {100 * r['test_accuracy']:.2f} |"
        )
    spread = [100 * r["test_accuracy"] for r in rows]
    lines += ["", f"Full-run test accuracy spans {min(spread):.2f} to {max(spread):.2f}% "
              f"(standard deviation {statistics.pstdev(spread):.2f} points)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=5000)
    parser.add_argument("--full-epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0, help="draws the candidates")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "search_proxy.md")
    parser.add_argument("--table-only", action="store_true", help="rewrite --out from its .json")
    args = parser.parse_args()
    saved = args.out.with_suffix(".json")
    done = json.loads(saved.read_text()) if saved.exists() else []
    if args.table_only:
        args.out.write_text(table([r for r in done if r.get("short_keeps") == "last"], args))
        return
    work = Path(os.environ.get("SEARCH_PROXY_DIR", tempfile.mkdtemp(prefix="search_proxy_")))
    os.environ.setdefault("DISTILL_CACHE", str(work / "cache"))  # the teacher, trained once
    recipe = load_recipe(RECIPE, [f"output.dir={work}/teacher"])
    task = task_for(recipe)
    task.prepare(False, print)
    teacher, _ = task.teacher(False, print)
    recipe = task.objectives().recipe
    rows = [r for r in done if r.get("full_epochs") == args.full_epochs]
    for i, student in enumerate(draw(args.candidates, args.seed)):
        row = next((r for r in rows if r["student"] == student), None)
        if row is not None and row.get("short_keeps") == "last":
            continue
        print(f"{i + 1}/{args.candidates}: {space.describe(student)}", flush=True)
        if row is None:
            row = {"student": student, "full_epochs": args.full_epochs}
            row.update(full_run(student, work / f"full_{i}", args.full_epochs))
            rows.append(row)
        short = short_run(task, recipe, teacher, student, work / f"short_last_{i}", args.heldout)
        row.update(short, short_keeps="last")
        print("  ", {k: v for k, v in row.items() if k != "student"}, flush=True)
        saved.write_text(json.dumps(rows, indent=2))
    text = table(rows, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
