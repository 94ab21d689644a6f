"""Distilling a diffusion sampler on this CPU: progressive and consistency distillation of a
class-conditional UNet trained on Fashion-MNIST, against the teacher's own DDIM.

Both runs are ``distill run recipes/fashion_mnist_progressive.yaml`` with overrides: the
images are resized to ``--image-size`` (16 by default, so the teacher trains in minutes
on 2 cores), the teacher (a diffusers UNet2DModel, 1.1M parameters) trains for
``--teacher-epochs`` and is reused by the second run from the teacher store. Progressive
distillation halves a 64-step DDIM sampler six times, ``--round-epochs`` per round;
consistency distillation trains one student on the teacher's 64-step grid for
``--cd-epochs``. Every sampler draws ``--samples`` images, class by class, scored by a CNN
trained on the real images: FID on its features against the 10,000 real test images
(FID with a domain classifier, not Inception-FID) and its accuracy on the samples.

    python benchmarks/diffusion_kd.py     # about 40 minutes on 2 CPU cores

Writes ``benchmarks/results/diffusion_kd.md`` (and ``.json``) and sample grids in
``benchmarks/results/diffusion_kd/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from distill.recipes.load import load_recipe
from distill.runs import run_recipe
from distill.runs.commands import sample_command

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "fashion_mnist_progressive.yaml"
SHOWN = (8, 4, 2, 1)


def overrides(args, out: Path, *more: str) -> list[str]:
    quick = [f"teacher.train.max_steps={args.max_steps}", f"train.max_steps={args.max_steps}"]
    return [
        *(quick if args.max_steps else []),
        f"diffusion.image_size={args.image_size}",
        f"diffusion.samples={args.samples}",
        f"teacher.train.epochs={args.teacher_epochs}",
        f"seed={args.seed}",
        f"output.dir={out}",
        *more,
    ]


def row(label: str, steps: int, m: dict) -> str:
    return (
        f"| {label} | {steps} | {m['fid']:.2f} | {100 * m['accuracy']:.1f} "
        f"| {1000 * m['seconds_per_image']:.1f} |"
    )


def table(pd: dict, cd: dict, args, minutes: float) -> str:
    teacher = pd["models"]["teacher"]
    rounds = {int(m["sampler_steps"]): m for k, m in pd["models"].items() if k != "teacher"}
    ddim = {int(k): m for k, m in teacher["ddim"].items()}
    student = cd["models"]["student"]
    consistency = {1: student, **{int(k): m for k, m in student["multistep"].items()}}
    lines = [
        "# Distilling a diffusion sampler (Fashion-MNIST, CPU)",
        "",
        f"Teacher: a class-conditional diffusers UNet2DModel ({teacher['parameters']:,} "
        f"parameters, v-prediction, 1,000-step linear schedule) trained {args.teacher_epochs} "
        f"epochs on the 54,000 training images resized to {args.image_size}×{args.image_size}; "
        f"its sampler: {pd['rounds'][0]}-step DDIM. Progressive distillation (Salimans & Ho "
        f"2022): rounds {' → '.join(map(str, pd['rounds']))}, {args.round_epochs} epoch(s) "
        "each, every student a copy of its teacher. Consistency distillation (Song et al. "
        f"2023): one student on the teacher's 64-step grid, {args.cd_epochs} epochs, "
        "pseudo-Huber loss, EMA target, multistep sampling. "
        f"Each sampler draws {args.samples:,} images (classes in turn, the same noise); FID "
        "and class accuracy come from a CNN trained on the real images (FID with a domain "
        "classifier, not Inception-FID: compare rows, not papers), against the 10,000 real "
        f"test images; CPU time per image when sampling in batches of {args.batch}. "
        f"Seed {args.seed}; {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; {minutes:.0f} minutes "
        "in all.",
        "",
        f"Command: `python benchmarks/diffusion_kd.py --image-size {args.image_size} "
        f"--teacher-epochs {args.teacher_epochs} --round-epochs {args.round_epochs} "
        f"--cd-epochs {args.cd_epochs} --samples {args.samples}`",
        "",
        "| sampler | steps | FID (domain classifier) | class accuracy of samples (%) | "
        "CPU ms / image |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("teacher, DDIM", pd["rounds"][0], teacher),
    ]
    lines += [row("teacher, DDIM (not distilled)", n, ddim[n]) for n in SHOWN if n in ddim]
    lines += [row("progressive distillation", n, rounds[n]) for n in SHOWN if n in rounds]
    lines += [row("consistency distillation", n, consistency[n]) for n in (4, 2, 1)]
    if 4 in rounds and 4 in ddim:
        ratio = rounds[4]["fid"] / ddim[4]["fid"]
        lines += [
            "",
            f"At 4 steps the distilled sampler's FID is {ratio:.2f}× the teacher's 4-step DDIM "
            f"({rounds[4]['fid']:.2f} vs {ddim[4]['fid']:.2f}; the 64-step teacher: "
            f"{teacher['fid']:.2f}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--round-epochs", type=int, default=1)
    parser.add_argument("--cd-epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="a quick look: steps per run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "diffusion_kd.md")
    args = parser.parse_args()
    started = time.perf_counter()
    grids = args.out.with_suffix("")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        pd_recipe = load_recipe(
            RECIPE, overrides(args, out / "pd", f"train.epochs={args.round_epochs}")
        )
        args.batch = pd_recipe.data.eval_batch_size
        pd = run_recipe(pd_recipe, progress=False)
        cd_recipe = load_recipe(RECIPE, overrides(
            args, out / "cd", "diffusion.method=consistency", f"train.epochs={args.cd_epochs}",
            "train.lr=0.0001",
            "objective={cd: {loss: consistency_distillation, options: {huber_c: 0.03}}}",
        ))  # fmt: skip
        cd = run_recipe(cd_recipe, progress=False)
        if grids.exists():
            shutil.rmtree(grids)
        run_pd, run_cd = out / "pd" / pd["name"], out / "cd" / cd["name"]
        for name, run_dir, model, steps in (
            ("teacher_ddim_64", run_pd, "teacher", 64), ("teacher_ddim_4", run_pd, "teacher", 4),
            ("progressive_4", run_pd, "round_4", None), ("progressive_1", run_pd, "student", None),
            ("consistency_1", run_cd, "student", 1),
        ):  # fmt: skip
            sample_command(run_dir, model=model, steps=steps, count=30, out=grids / f"{name}.png")
    text = table(pd, cd, args, (time.perf_counter() - started) / 60)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"progressive": pd, "consistency": cd}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
