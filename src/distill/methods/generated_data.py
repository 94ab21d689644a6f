"""A teacher-written dataset on disk (sequence-level KD): answers appended to a partial
file as they come, so a killed job continues where it stopped; optionally several samples
per prompt, verified and filtered (``methods.verify``); the result is a JSONL chat dataset
with a ``<name>.provenance.json`` (teacher, settings, counts, what the verifier let
through, versions and the SHA-256 of the JSONL)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from torch import nn

from distill.errors import MissingDependency
from distill.methods.generation import (
    ANSWER_SETTINGS,
    GenerationSettings,
    generate_answers,
    generate_with_vllm,
    text_lines,
    uses_vllm,
    vllm_available,
)
from distill.methods.verify import Keep, Sample, Verifier, acceptance, select
from distill.paths import sha256_file


def provenance_path(path: Path) -> Path:
    """``<stem>.provenance.json`` next to the dataset."""
    return path.with_name(f"{path.stem}.provenance.json")


def partial_path(path: Path) -> Path:
    """``<stem>.partial.jsonl`` next to the dataset: the answers of an unfinished run."""
    return path.with_name(f"{path.stem}.partial.jsonl")


def _versions() -> dict[str, str]:
    found = {}
    for package in ("distill", "torch", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_generations(
    path: str | Path,
    prompts: Sequence[dict[str, Any]],
    answers: Sequence[str],
    provenance: dict[str, Any],
) -> Path:
    """The chat dataset (prompt + the answer as the assistant turn, one JSON row per prompt,
    the shape ``ChatExamples`` reads) and ``<stem>.provenance.json``: ``provenance`` plus
    count, created (UTC), the dataset's SHA-256 and package versions."""
    rows = [
        {"id": p["id"], "messages": [*p["messages"], {"role": "assistant", "content": a}]}
        for p, a in zip(prompts, answers, strict=True)
    ]
    return write_rows(path, rows, {**provenance, "empty_answers": sum(not a for a in answers)})


def write_rows(
    path: str | Path, rows: Sequence[dict[str, Any]], provenance: dict[str, Any]
) -> Path:
    """Chat rows as they are (a dataset gathered from others, e.g. one per teacher) and
    their provenance file, as ``write_generations`` writes them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    meta = {
        **provenance,
        "count": len(rows),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": sha256_file(path),
        "versions": _versions(),
    }
    provenance_path(path).write_text(json.dumps(meta, indent=2, ensure_ascii=False), "utf-8")
    return path


def read_generations(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, provenance); a dataset changed since it was written is an error."""
    path = Path(path)
    meta_path = provenance_path(path)
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: {path} was not written by distill")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if sha256_file(path) != meta.get("sha256"):
        raise ValueError(
            f"{path} changed since it was generated (SHA-256 differs from {meta_path.name}); "
            "regenerate it or remove the provenance file if the edit is intended"
        )
    rows = [json.loads(line) for line in text_lines(path) if line.strip()]
    return rows, meta


def _read_partial(partial: Path, header: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The answers (and their mean log-probabilities) kept in a partial file, checked
    against this run's ``header``. A last line cut off by the kill is dropped, and the file
    rewritten without it."""
    text = partial.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row cut off mid-write; it is answered again
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    done: dict[str, tuple[str, float]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(
                f"{partial}, line {number}: not valid JSON; delete the file to start over"
            ) from None
        if "header" in row:
            if row["header"] != header:
                raise ValueError(
                    f"{partial} was written by a run with other settings or teacher "
                    f"({row['header']}); rerun with those, or delete the file to start over"
                )
        else:
            done[str(row["id"])] = (row["answer"], float(row.get("logprob", 0.0)))
    return done


def sample_rows(prompts: Sequence[dict[str, Any]], samples: int) -> list[dict[str, Any]]:
    """Each prompt ``samples`` times, as rows ``{"id", "messages", "prompt", "sample"}``;
    the id is the prompt's with one sample, ``<id>/<k>`` with several."""
    return [
        {
            "id": p["id"] if samples == 1 else f"{p['id']}/{k}",
            "messages": p["messages"],
            "prompt": index,
            "sample": k,
        }
        for index, p in enumerate(prompts)
        for k in range(samples)
    ]


def generate_dataset(
    model: nn.Module | None,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    out: str | Path,
    provenance: dict[str, Any],
    *,
    model_id: str | None = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    verifier: Verifier | None = None,
    keep: Keep = "best",
    verification: dict[str, Any] | None = None,
) -> Path:
    """Answer ``prompts`` with the teacher (``settings.samples`` answers each) and write the
    dataset with ``write_generations``.

    Every finished batch is appended to ``<stem>.partial.jsonl``; a run killed and started
    again with the same prompts, settings and provenance answers only the samples missing
    there (a changed ``batch_size`` or ``backend`` is fine). The partial file is removed
    once the dataset is written. vLLM answers when ``settings.backend`` is ``vllm``, or
    ``auto`` with vLLM installed and ``model_id`` (a hub id or folder) given.

    With a ``verifier`` (``methods.verify``: ``(answer, prompt row) -> bool``) only the
    samples ``keep`` chooses among the correct ones are written (rejection sampling), and
    the provenance file gains ``verification``: ``verification`` (how it was checked) and
    what was let through. Without one every sample is written.
    """
    out = Path(out)
    partial = partial_path(out)
    use_vllm = uses_vllm(settings, model_id)
    if model is None and not use_vllm:
        raise ValueError("generate_dataset needs the model unless vLLM generates")
    if use_vllm and model_id is None:
        raise ValueError("generate.backend vllm needs the teacher as a hub id or folder")
    if use_vllm and not vllm_available():
        raise MissingDependency("generate.backend vllm needs vLLM: pip install vllm")
    rows = sample_rows(prompts, settings.samples)
    # what must match for a partial file to be resumed (JSON round-tripped, as read back)
    header = json.loads(
        json.dumps(
            {"settings": settings.model_dump(include=set(ANSWER_SETTINGS)), **provenance},
            default=str,
        )
    )
    done: dict[str, tuple[str, float]] = {}
    if partial.exists():
        done = _read_partial(partial, header)
        unknown = set(done) - {str(r["id"]) for r in rows}
        if unknown:
            raise ValueError(
                f"{partial} holds answers to prompts that are not in this prompt set "
                f"({sorted(unknown)[:3]}…); delete it to start over"
            )
        log(f"generate: resuming, {len(done)} of {len(rows)} answers written")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
    todo = [r for r in rows if str(r["id"]) not in done]
    started = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as handle:

        def kept(indices: list[int], answers: list[str], logprobs: list[float]) -> None:
            for i, answer, logprob in zip(indices, answers, logprobs, strict=True):
                line = {"id": todo[i]["id"], "answer": answer, "logprob": logprob}
                handle.write(json.dumps(line) + "\n")
                done[str(todo[i]["id"])] = (answer, logprob)
            handle.flush()

        if todo and use_vllm:
            assert model_id is not None
            answers, logprobs = generate_with_vllm(model_id, todo, settings, tokenizer)
            kept(list(range(len(todo))), answers, logprobs)
        elif todo:
            score = verifier is not None and keep == "best" and settings.samples > 1
            generate_answers(model, tokenizer, todo, settings, progress, on_batch=kept, score=score)
    samples: list[list[Sample]] = [[] for _ in prompts]
    for row in rows:
        answer, logprob = done[str(row["id"])]
        samples[row["prompt"]].append(Sample(row["sample"], answer, logprob))
    written: list[tuple[dict[str, Any], str]] = []
    for index, prompt in enumerate(prompts):
        chosen = samples[index]
        if verifier is not None:
            for sample in chosen:
                sample.correct = bool(verifier(sample.text, prompt))
            chosen = select(chosen, keep)
        for sample in chosen:
            row = rows[index * settings.samples + sample.index]
            written.append(({"id": row["id"], "messages": prompt["messages"]}, sample.text))
    meta = {
        **provenance,
        "settings": settings.model_dump(),
        "seconds": time.perf_counter() - started,
    }
    meta["settings"]["backend"] = "vllm" if use_vllm else "transformers"
    if verifier is not None:
        meta["verification"] = {
            **(verification or {}),
            "keep": keep,
            **acceptance(samples, len(written)),
        }
        log(
            f"generate: {meta['verification']['prompts_solved']} of {len(prompts)} prompts "
            f"have a verified answer ({meta['verification']['correct_samples']} of "
            f"{len(rows)} samples correct); {len(written)} rows kept"
        )
    write_generations(out, [p for p, _ in written], [a for _, a in written], meta)
    partial.unlink()
    return out
