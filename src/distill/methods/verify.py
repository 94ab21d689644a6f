"""Verified teacher answers: rejection sampling of reasoning traces.

DeepSeek-R1's small models (DeepSeek-AI 2025) were fine-tuned on reasoning traces the large
model wrote, keeping only those whose final answer checks out; STaR (Zelikman et al. 2022)
and rejection-sampling fine-tuning (Yuan et al. 2023) do the same. Here a teacher writes
``samples`` answers per prompt, a verifier compares each answer's final result with the
prompt's reference ``answer``, and ``select`` keeps, per prompt, the best correct sample
(the one the teacher's sampling gave the highest mean log-probability per token), every
correct one, or the shortest correct one; a prompt with no correct sample keeps nothing.

Recipes choose a built-in verifier (``VerifySpec``: how the final answer is read from the
text, exact or numeric comparison) and never name code; the Python API also takes any
``Verifier``, a function ``(answer text, prompt row) -> bool``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verifier = Callable[[str, dict[str, Any]], bool]
Keep = Literal["best", "all_correct", "shortest_correct"]
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


class VerifySpec(BaseModel):
    """A built-in verifier: the final answer is read from the text by ``answer_from``
    (``last_number``; ``boxed``: the last ``\\boxed{...}``; ``marker``: the text after the
    last ``marker``, case-insensitive; ``last_line``; ``whole``) and compared with the
    prompt's reference ``answer``: as numbers within ``tolerance`` (absolute) when
    ``numeric``, else as text (whitespace and case folded). ``keep`` chooses among the
    correct samples of a prompt."""

    model_config = ConfigDict(extra="forbid")

    answer_from: Literal["last_number", "boxed", "marker", "last_line", "whole"] = Field(
        "last_number", description="where the final answer is read from the text"
    )
    marker: str = Field(
        "answer:", min_length=1, description="answer_from: marker: the text read after it"
    )
    numeric: bool = Field(True, description="compare as numbers; false: as folded text")
    tolerance: float = Field(1e-6, ge=0, description="numeric: the absolute difference allowed")
    keep: Keep = Field(
        "best",
        description="per prompt: best (the correct answer of highest mean log-prob), "
        "all_correct or shortest_correct",
    )


def final_answer(text: str, spec: VerifySpec) -> str | None:
    """The final answer ``spec.answer_from`` reads from ``text``; None when there is none."""
    if spec.answer_from == "boxed":
        found = re.findall(r"\\boxed\{([^{}]*)\}", text)
        return found[-1].strip() if found else None
    if spec.answer_from == "marker":
        at = text.lower().rfind(spec.marker.lower())
        if at < 0:
            return None
        return text[at + len(spec.marker) :].strip() or None
    if spec.answer_from == "last_line":
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else None
    if spec.answer_from == "last_number":
        numbers = NUMBER.findall(text)
        return numbers[-1] if numbers else None
    return text.strip() or None


def as_number(text: str) -> float | None:
    """The first number in ``text`` (thousands separators dropped), or None."""
    found = NUMBER.search(text)
    if found is None:
        return None
    try:
        return float(found.group().replace(",", ""))
    except ValueError:
        return None


def answer_verifier(spec: VerifySpec) -> Verifier:
    """The built-in verifier ``spec`` describes, reading each prompt row's ``answer``."""

    def verify(text: str, prompt: dict[str, Any]) -> bool:
        found = final_answer(text, spec)
        if found is None:
            return False
        reference = str(prompt["answer"])
        if spec.numeric:
            got, want = as_number(found), as_number(reference)
            return (
                got is not None
                and want is not None
                and math.isclose(got, want, rel_tol=0.0, abs_tol=spec.tolerance)
            )
        return " ".join(found.lower().split()) == " ".join(reference.lower().split())

    return verify


@dataclass
class Sample:
    """One of a prompt's answers: its index among the prompt's samples, the text, the mean
    log-probability per token the sampling gave it, and whether it was verified correct."""

    index: int
    text: str
    logprob: float = 0.0
    correct: bool | None = None


def select(samples: Sequence[Sample], keep: Keep) -> list[Sample]:
    """The samples of one prompt to keep: the ``best`` correct one (highest mean
    log-probability, then the earliest), ``all_correct`` or the ``shortest_correct`` (in
    characters); none when no sample is correct."""
    correct = [s for s in samples if s.correct]
    if not correct or keep == "all_correct":
        return correct
    if keep == "shortest_correct":
        return [min(correct, key=lambda s: (len(s.text), s.index))]
    return [max(correct, key=lambda s: (s.logprob, -s.index))]


def acceptance(samples_per_prompt: Sequence[Sequence[Sample]], kept: int) -> dict[str, Any]:
    """What the verifier let through, for the provenance file."""
    every = [s for samples in samples_per_prompt for s in samples]
    solved = sum(any(s.correct for s in samples) for samples in samples_per_prompt)
    prompts = len(samples_per_prompt)
    return {
        "prompts": prompts,
        "samples": len(every),
        "correct_samples": sum(bool(s.correct) for s in every),
        "sample_accuracy": sum(bool(s.correct) for s in every) / max(1, len(every)),
        "prompts_solved": solved,
        "prompts_solved_share": solved / max(1, prompts),
        "kept_rows": kept,
    }
