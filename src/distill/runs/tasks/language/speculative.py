"""``distill eval RUN_DIR --speculative``: a causal-LM run's student as a speculative-decoding
draft for the recipe's teacher. On the test rows: the expected acceptance rate α (sampling
at temperature 1: Σ min(p, q)) and the top-1 agreement (greedy). On prompts cut from the
test rows: Hugging Face assisted generation against the teacher alone, greedy and sampled
(``methods.speculative``): tokens per second, speed-up, tokens per teacher forward pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import RecipeError
from distill.methods.speculative import assisted_generation
from distill.models import hf
from distill.recipes import Recipe
from distill.runs.task import Task, loader
from distill.runs.tasks.language.models import is_served
from distill.runs.workdir import BASELINE_DIR, HF_STUDENT_DIR, Log, verify_finished
from distill.teachers import Module
from distill.training import Distiller

RESULT_FILE = "speculative.json"
ROWS = {"student": ".", "baseline": BASELINE_DIR}


def draft_folder(recipe: Recipe, run_dir: Path, row: str) -> Path:
    """The finished folder of the run's ``row``, once the recipe is one a draft can serve."""
    if row not in ROWS:
        raise RecipeError(f"--row: one of {', '.join(ROWS)}, not {row!r}")
    if recipe.teacher is None:
        raise RecipeError("distill eval --speculative: the run has no teacher to draft for")
    if recipe.teacher.tokenizer is not None or is_served(recipe):
        raise RecipeError(
            "distill eval --speculative: the draft and the teacher must share a tokenizer and "
            "run here (not teacher.tokenizer, not a served teacher)"
        )
    folder = Path(run_dir) / ROWS[row]
    if not (folder / HF_STUDENT_DIR).is_dir():
        raise FileNotFoundError(f"{folder} holds no {HF_STUDENT_DIR}/ folder; did that row train?")
    verify_finished(folder)
    return folder


def measure_draft(
    task: Task,
    folder: Path,
    *,
    row: str = "student",
    prompts: int = 8,
    prompt_tokens: int = 32,
    new_tokens: int = 64,
    draft_tokens: int | None = None,
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Measure ``row``'s student in ``folder`` (``draft_folder``) as a draft for the
    teacher of ``task`` (its data prepared); the result is also written to
    ``<folder>/speculative.json``."""
    recipe, data = task.recipe, task.data
    assert recipe.teacher is not None  # draft_folder checked it
    target, _ = task.teacher(False, log)
    draft = hf.auto_class("causal").from_pretrained(folder / HF_STUDENT_DIR).eval()
    metrics = Distiller(draft, Module(target), progress=False).evaluate(
        loader(data.test, recipe, False)
    )
    count = min(prompts, len(data.test))  # type: ignore[arg-type]
    cut = [data.test[i]["input_ids"][:prompt_tokens] for i in range(count)]
    log(
        f"draft {row} ({folder / HF_STUDENT_DIR}) for {recipe.teacher.model}: {count} prompts of "
        f"{prompt_tokens} tokens, {new_tokens} new tokens each, greedy and sampled"
    )
    speed = assisted_generation(
        target,
        draft,
        cut,
        new_tokens=new_tokens,
        seed=seed,
        pad_token_id=data.tokenizer.pad_token_id,
        draft_tokens=draft_tokens,
    )
    result = {
        "row": row,
        "draft": str(folder / HF_STUDENT_DIR),
        "teacher": recipe.teacher.model,
        "acceptance": metrics.get("acceptance"),
        "teacher_agreement": metrics.get("teacher_agreement"),
        "kl_to_teacher": metrics.get("kl_to_teacher"),
        "prompts": count,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "draft_tokens": draft_tokens,
        **{f"{mode}_{key}": value for mode, row_ in speed.items() for key, value in row_.items()},
    }
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result
