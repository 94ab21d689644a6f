"""The shipped CLIP recipe, as a user runs it: ``distill run recipes/fashion_mnist_clip_kd.yaml``
on real Fashion-MNIST (one seed, the recipe's own settings), its report table written to
``benchmarks/results/clip_recipe.md`` for the docs.

    python benchmarks/clip_recipe.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from distill.recipes.load import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "fashion_mnist_clip_kd.yaml"
LABELS = {"teacher": "teacher image tower", "baseline": "student, captions only (contrastive)",
          "student": "student, distilled (relational)"}  # fmt: skip


def table(summary: dict, minutes: float) -> str:
    lines = [
        "# The CLIP recipe on Fashion-MNIST",
        "",
        f"`distill run recipes/fashion_mnist_clip_kd.yaml` (seed {summary['seed']}), through "
        f"`python benchmarks/clip_recipe.py`: {summary['regime']}. Text tower "
        f"{summary['text_tower']} (frozen), teacher logit scale {summary['logit_scale']:.1f}. "
        "Zero-shot accuracy and recall on the 10,000 test images; each student selected on "
        "the 200 validation images by zero-shot accuracy. Image→text R@5: the image's own "
        "caption among the 5 closest of the 80 template captions (8 near-synonyms per "
        f"class). {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {minutes:.1f} minutes in all.",
        "",
        "| model | zero-shot acc. (%) | linear probe (%) | image→text R@5 (%) | params "
        "| CPU ms / image | KL to teacher |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in LABELS.items():
        m = summary["models"][key]
        kl = "" if key == "teacher" else f"{m['kl_to_teacher']:.3f}"
        lines.append(
            f"| {label} | {100 * m['accuracy']:.2f} | {100 * m['linear_probe']:.2f} "
            f"| {100 * m['image_to_text_r5']:.1f} | {m['parameters']:,} | {m['latency_ms']:.3f} "
            f"| {kl} |"
        )
    closed = summary["gap_closed"]
    lines += ["", f"Zero-shot gap closed: {100 * closed:.0f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "clip_recipe.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        recipe = load_recipe(RECIPE, [f"output.dir={folder}"])
        summary = run_recipe(recipe, progress=False)
    summary["seed"] = recipe.seed
    text = table(summary, summary["seconds"] / 60)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
