"""Distil, then compress, on Fashion-MNIST: the teacher, the distilled student, then each
stage of ``recipes/fashion_mnist_compress.yaml`` (channels removed, layers factorized,
weights pruned, int8 quantization-aware training; every stage distilled again from the
teacher), then the ONNX and ONNX Runtime int8 exports of the last float stage. Accuracy,
parameters (nonzero ones after pruning), bytes on disk and CPU latency per example.

``--no-kd-recovery`` reruns the stages with cross-entropy on the labels alone as the
recovery objective (``recover: labels``), to show what distilling from the teacher buys
at each stage.

    python benchmarks/compress.py                  # seeds 0-2, about 15 minutes on 2 cores
    python benchmarks/compress.py --seeds 1        # a quick look

Writes ``benchmarks/results/compress.md`` (and ``.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill.recipes import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "fashion_mnist_compress.yaml"
LABELS = {
    "teacher": "teacher (CNN)",
    "baseline": "student, labels only",
    "student": "student, distilled",
    "compress_1_channels": "+ half the channels removed",
    "compress_2_factorize": "+ factorized (SVD, 90% energy)",
    "compress_3_prune": "+ 70% of weights pruned",
    "compress_4_quantize": "+ int8 QAT (torchao)",
    "export_onnx": "ONNX export of the pruned student",
    "export_onnx_int8": "ONNX Runtime int8 of it",
    "export_onnx_qdq": "ONNX QDQ static int8 of the QAT student",
}


def one_run(seed: int, kd_recovery: bool) -> dict[str, dict]:
    recipe = load_recipe(RECIPE, [f"seed={seed}"])
    if not kd_recovery:  # the same distilled student; each stage recovers on labels only
        stages = [s.model_copy(update={"recover": "labels"}) for s in recipe.compress]
        recipe = recipe.model_copy(update={"compress": stages})
    with tempfile.TemporaryDirectory() as out:  # the recipe exports at the end
        summary = run_recipe(recipe, out_dir=Path(out), progress=False, log=lambda m: None)
    return summary["models"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-kd-recovery", action="store_true", help="also the CE-only run")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "compress.md")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = {"kd": [one_run(seed, True) for seed in range(args.seeds)]}
    if args.no_kd_recovery:
        runs["ce"] = [one_run(seed, False) for seed in range(args.seeds)]
    for seed, rows in enumerate(runs["kd"]):
        print(
            f"seed {seed}: " + ", ".join(f"{k} {100 * r['accuracy']:.2f}" for k, r in rows.items())
        )

    def accuracy(name: str, key: str) -> str:
        values = [100 * rows[key]["accuracy"] for rows in runs[name]]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {spread:.2f}"

    first = runs["kd"][0]
    header = "| model | test accuracy (%) | parameters | size on disk | CPU ms/example |"
    if "ce" in runs:
        header += " recovery with labels only (%) |"
    lines = [
        "# Distil, then compress: Fashion-MNIST",
        "",
        f"`recipes/fashion_mnist_compress.yaml`, seeds 0–{args.seeds - 1} (accuracy mean ± "
        "std; parameters, bytes and latency from seed 0). Each stage starts from the one "
        "above and is distilled again from the teacher for one epoch. Parameters after "
        "pruning count the nonzero ones (the dense file keeps the zeros); the int8 rows "
        "quantize the Linear layers. ONNX rows: the pruned student exported, checked against "
        "PyTorch on the 10,000 test images (agreement in the JSON), run in ONNX Runtime. "
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {(time.perf_counter() - started) / 60:.0f} minutes in all.",
        "",
        "Command: `python benchmarks/compress.py"
        + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
        + (" --no-kd-recovery" if args.no_kd_recovery else "")
        + "`",
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if "ce" in runs else ""),
    ]
    for key, label in LABELS.items():
        if key not in first:
            continue
        row = first[key]
        params = f"{row['parameters']:,}" if "parameters" in row else ""
        cells = [
            label,
            accuracy("kd", key),
            params,
            f"{row['size_bytes'] / 1024:,.0f} KiB",
            f"{row['latency_ms']:.3f}",
        ]
        if "ce" in runs:
            cells.append(accuracy("ce", key) if key.startswith("compress_") else "")
        lines.append("| " + " | ".join(cells) + " |")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(runs, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
