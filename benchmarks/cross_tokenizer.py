"""Cross-tokenizer distillation as a user runs it: ``recipes/llm_cross_tokenizer.yaml``
(SmolLM2-135M-Instruct, byte-level BPE, teaching a 2-layer Llama that reads all-MiniLM-L6-v2's
WordPiece tokens), with the hybrid loss and with ULD alone, next to the label-only
student, for each seed. Writes ``benchmarks/results/cross_tokenizer.md`` and ``.json``.

    python benchmarks/cross_tokenizer.py              # 3 seeds, about 35 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from classic_kd import mean_std

from distill.recipes.load import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RECIPE = ROOT.parent / "recipes" / "llm_cross_tokenizer.yaml"


def run(seed: int, folder: str, changes: list[str]) -> dict:
    recipe = load_recipe(RECIPE, [f"seed={seed}", f"output.dir={folder}/seed_{seed}", *changes])
    return run_recipe(recipe, progress=False, log=lambda line: print("  ", line, flush=True))


def table(results: list[dict]) -> str:
    rows = [("student, labels only", "baseline", "hybrid"),
            ("student, hybrid (exact KL on shared one-to-one spans, ULD elsewhere)", "student",
             "hybrid"),
            ("student, ULD on every span", "student", "uld")]  # fmt: skip
    first = results[0]["hybrid"]
    teacher = [r["hybrid"]["models"]["teacher"]["perplexity"] for r in results]
    lines = [
        "# Cross-tokenizer distillation: SmolLM2-135M teaching a WordPiece student",
        "",
        f"`python benchmarks/cross_tokenizer.py`: `recipes/llm_cross_tokenizer.yaml`, seeds "
        f"{', '.join(str(r['seed']) for r in results)} (mean ± std over seeds): "
        f"{first['regime']}. Student: a 2-layer Llama (hidden 128) on all-MiniLM-L6-v2's "
        f"WordPiece tokens, {first['steps']} steps for each student. Perplexity and token "
        "accuracy on the held-out test rows, per student token. Teacher agreement: over the "
        "spans that are one token in both tokenizers, how often the student's top next "
        "token is the teacher's (through the shared vocabulary). "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}.",
        "",
        "| student | test perplexity | token accuracy (%) | teacher agreement (%) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, key, mode in rows:
        models = [r[mode]["models"][key] for r in results]
        lines.append(
            f"| {label} | {mean_std([m['perplexity'] for m in models], 1)} "
            f"| {mean_std([m['accuracy'] for m in models])} "
            f"| {mean_std([m['teacher_agreement'] for m in models])} |"
        )
    lines += [
        "",
        f"The teacher's perplexity on the same test text, per token of its own tokenizer: "
        f"{mean_std(teacher, 1)}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cross_tokenizer.md")
    parser.add_argument("--table-only", action="store_true", help="rewrite from the .json")
    args = parser.parse_args()
    if args.table_only:
        args.out.write_text(table(json.loads(args.out.with_suffix(".json").read_text())))
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DISTILL_CACHE"] = str(Path(folder) / "cache")
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            hybrid = run(seed, folder, [])
            uld = run(seed, folder, ["name=llm_cross_tokenizer_uld", "baseline=false",
                                     "objective.kd.options.mode=uld"])  # fmt: skip
            results.append({"seed": seed, "hybrid": hybrid, "uld": uld})
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    text = table(results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
