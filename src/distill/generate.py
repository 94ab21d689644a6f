"""Sequence-level distillation data: the teacher answers prompts, written as a chat dataset.

Kim & Rush (2016) train the student on the teacher's own outputs instead of the references;
today's LLM distillation does the same with instructions and reasoning chains (Orca,
DeepSeek-R1's distilled models). ``generate_dataset`` renders each prompt with the
tokenizer's chat template, generates in length-sorted, left-padded batches with
transformers (or vLLM when asked and installed), and appends every finished batch to a
partial file, so a killed job rerun with the same arguments continues where it stopped.
The result is a JSONL file of ``{"id", "messages"}`` rows (the prompt and the teacher's
answer as the assistant turn, which ``data.format: chat`` trains on) and a
``<name>.provenance.json`` next to it: teacher, settings, counts, versions and the SHA-256
of the JSONL.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class GenerationSettings(BaseModel):
    """How the teacher answers."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0, description="0: greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    backend: Literal["auto", "transformers", "vllm"] = "auto"


def _record(row: Any, where: str, fallback_id: int) -> dict[str, Any]:
    if not isinstance(row, dict) or not ({"prompt", "messages"} & set(row)):
        raise ValueError(f"{where}: a row needs 'prompt' (text) or 'messages' (a chat)")
    if "messages" in row:
        messages = [dict(m) for m in row["messages"]]
        if messages and messages[-1].get("role") == "assistant":
            messages = messages[:-1]  # re-answer an existing chat dataset
        if not messages or messages[-1].get("role") != "user":
            raise ValueError(f"{where}: 'messages' must end with a user turn to answer")
    else:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError(f"{where}: 'prompt' must be non-empty text")
        messages = [{"role": "user", "content": row["prompt"]}]
    return {"id": row.get("id", fallback_id), "messages": messages}


def load_prompts(source: str | Path) -> list[dict[str, Any]]:
    """Prompts as ``{"id", "messages"}``: from a .jsonl file (a ``prompt`` or ``messages``
    per row), a .txt file (one prompt per line) or ``pydoc`` (a question per CPython help
    topic). Errors name the file and line."""
    if str(source) == "pydoc":
        from distill.data.text import pydoc_prompts

        return pydoc_prompts()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        elif path.suffix == ".txt":
            row = {"prompt": line.strip()}
        else:
            raise ValueError(f"prompts file {path}: use .jsonl or .txt")
        prompts.append(_record(row, where, number - 1))
    ids = [p["id"] for p in prompts]
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"{path}: prompt ids repeat; give each row a unique 'id'")
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text: the chat template with the generation prompt, or the user turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


@torch.inference_mode()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    progress: bool = True,
    on_batch: Any = None,
) -> list[str]:
    """The model's answer to each prompt (transformers ``generate``), in prompt order.
    ``on_batch(indices, answers)`` is called after each batch."""
    from rich.progress import Progress

    texts = [render(tokenizer, p["messages"]) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    torch.manual_seed(settings.seed)
    sampling = settings.temperature > 0
    options: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": settings.max_new_tokens}
    if sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
    device = next(model.parameters()).device
    try:
        with Progress(disable=not progress) as bar:
            task = bar.add_task("generate", total=len(texts))
            for start in range(0, len(order), settings.batch_size):
                chunk = order[start : start + settings.batch_size]
                encoded = tokenizer(
                    [texts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                ).to(device)
                output = model.generate(
                    **encoded, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **options
                )
                new = output[:, encoded["input_ids"].shape[1] :]
                done = tokenizer.batch_decode(new, skip_special_tokens=True)
                for i, text in zip(chunk, done, strict=True):
                    answers[i] = text.strip()
                if on_batch is not None:
                    on_batch(chunk, [answers[i] for i in chunk])
                bar.advance(task, len(chunk))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def generate_with_vllm(
    model_id: str, prompts: Sequence[dict[str, Any]], settings: GenerationSettings
) -> list[str]:
    """The same with vLLM (``pip install vllm``; a GPU): one call, vLLM batches itself."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise ImportError("generate.backend vllm needs vLLM: pip install vllm") from error
    llm = LLM(model=model_id, seed=settings.seed)
    params = SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p if settings.temperature > 0 else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    outputs = llm.chat([p["messages"] for p in prompts], params)
    return [o.outputs[0].text.strip() for o in outputs]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def provenance_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.provenance.json")


def partial_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.partial.jsonl")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

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
    """The chat dataset (prompt + the answer as the assistant turn) and its provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": p["id"], "messages": [*p["messages"], {"role": "assistant", "content": a}]}
        for p, a in zip(prompts, answers, strict=True)
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    meta = {
        **provenance,
        "count": len(rows),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sha256": _sha256(path),
        "versions": _versions(),
    }
    provenance_path(path).write_text(json.dumps(meta, indent=2))
    return path


def read_generations(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, provenance); a dataset changed since it was written is an error."""
    path = Path(path)
    meta_path = provenance_path(path)
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} is missing: {path} was not written by distill")
    meta = json.loads(meta_path.read_text())
    if _sha256(path) != meta.get("sha256"):
        raise ValueError(
            f"{path} changed since it was generated (SHA-256 differs from {meta_path.name}); "
            "regenerate it or remove the provenance file if the edit is intended"
        )
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows, meta


def generate_dataset(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    out: str | Path,
    provenance: dict[str, Any],
    *,
    model_id: str | None = None,
    progress: bool = True,
    log: Any = print,
) -> Path:
    """Answer ``prompts`` with the teacher and write the dataset; resumable (see module)."""
    out = Path(out)
    partial = partial_path(out)
    done: dict[str, str] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[str(row["id"])] = row["answer"]
        unknown = set(done) - {str(p["id"]) for p in prompts}
        if unknown:
            raise ValueError(
                f"{partial} holds answers to prompts that are not in this prompt set "
                f"({sorted(unknown)[:3]}…); delete it to start over"
            )
        log(f"generate: resuming, {len(done)} of {len(prompts)} prompts answered")
    todo = [p for p in prompts if str(p["id"]) not in done]
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    use_vllm = settings.backend == "vllm" or (
        settings.backend == "auto" and model_id is not None and vllm_available()
    )
    with open(partial, "a") as handle:

        def keep(indices: list[int], answers: list[str]) -> None:
            for i, answer in zip(indices, answers, strict=True):
                handle.write(json.dumps({"id": todo[i]["id"], "answer": answer}) + "\n")
                done[str(todo[i]["id"])] = answer
            handle.flush()

        if todo and use_vllm:
            if model_id is None:
                raise ValueError("generate.backend vllm needs the teacher as a hub id or folder")
            keep(list(range(len(todo))), generate_with_vllm(model_id, todo, settings))
        elif todo:
            generate_answers(model, tokenizer, todo, settings, progress, on_batch=keep)
    answers = [done[str(p["id"])] for p in prompts]
    settings_json = settings.model_dump()
    settings_json["backend"] = "vllm" if use_vllm else "transformers"
    write_generations(
        out,
        prompts,
        answers,
        {**provenance, "settings": settings_json, "seconds": time.perf_counter() - started},
    )
    partial.unlink()
    return out
