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

import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import nn

from distill.data.text import pydoc_prompts
from distill.errors import MissingDependency
from distill.paths import sha256_file

# settings that change the answers; a partial file written under others is not resumed
ANSWER_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed")


class GenerationSettings(BaseModel):
    """How the teacher answers."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0, description="0: greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    backend: Literal["auto", "transformers", "vllm"] = "auto"


def _lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, split on newlines only: ``str.splitlines`` would also
    split inside JSON strings that hold U+2028, U+2029 or U+0085, which JSON leaves raw."""
    return path.read_text(encoding="utf-8").split("\n")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise ValueError(
            f'{where}: \'messages\' must be a list of {{"role": ..., "content": text}} turns'
        )
    return [dict(m) for m in value]


def _record(row: Any, where: str, fallback_id: int) -> dict[str, Any]:
    if not isinstance(row, dict) or not ({"prompt", "messages"} & set(row)):
        raise ValueError(f"{where}: a row needs 'prompt' (text) or 'messages' (a chat)")
    if "id" in row and not isinstance(row["id"], (str, int)):
        raise ValueError(f"{where}: 'id' must be a string or an integer")
    if "messages" in row:
        messages = _messages(row["messages"], where)
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
        return pydoc_prompts()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    prompts = []
    first_line: dict[str, int] = {}  # id -> the line that gave it
    for number, line in enumerate(_lines(path), start=1):
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
        key = str(prompts[-1]["id"])  # ids are compared as text, as in the partial file
        if key in first_line:
            raise ValueError(
                f"{where}: id {prompts[-1]['id']!r} repeats line {first_line[key]}; give each "
                "row a unique 'id' (rows without one get their 0-based line number)"
            )
        first_line[key] = number
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The prompt text: the chat template with the generation prompt, or the user turns."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """The model's end tokens (a chat model's generation config often lists its end-of-turn
    token besides the tokenizer's EOS; passing only one would run past the answer)."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    return ids


def _until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """The answer's tokens before the first end token (generate pads finished rows after it)."""
    return next((tokens[:i] for i, token in enumerate(tokens) if token in eos), tokens)


@torch.inference_mode()
def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    progress: bool = True,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """The model's answer to each prompt (transformers ``generate``), in prompt order.

    Prompts are sorted by length and left-padded in batches of ``settings.batch_size``;
    the answer is the text of the new tokens before the first end token, stripped. The
    torch RNG is seeded with ``settings.seed`` inside a fork, so sampling is reproducible and
    the caller's RNG state is untouched. ``on_batch(indices, answers)`` is called after each
    batch with the indices of its prompts.
    """
    if not prompts:
        return []
    template = bool(getattr(tokenizer, "chat_template", None))
    special = not template  # the chat template writes BOS itself; plain text needs it added
    texts = [render(tokenizer, p["messages"]) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(texts)
    eos = _eos_ids(model, tokenizer)
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    sampling = settings.temperature > 0
    options: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": settings.max_new_tokens}
    if sampling:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
    device = next(model.parameters()).device
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), Progress(disable=not progress) as bar:
            torch.manual_seed(settings.seed)
            task = bar.add_task("generate", total=len(texts))
            for start in range(0, len(order), settings.batch_size):
                chunk = order[start : start + settings.batch_size]
                encoded = tokenizer(
                    [texts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=special,
                )
                output = model.generate(
                    input_ids=encoded["input_ids"].to(device),
                    attention_mask=encoded["attention_mask"].to(device),
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=eos,
                    **options,
                )
                new = output[:, encoded["input_ids"].shape[1] :].tolist()
                done = tokenizer.batch_decode(
                    [_until_eos(tokens, eos) for tokens in new], skip_special_tokens=True
                )
                for i, text in zip(chunk, done, strict=True):
                    answers[i] = text.strip()
                if on_batch is not None:
                    on_batch(chunk, [answers[i] for i in chunk])
                bar.advance(task, len(chunk))
    finally:
        tokenizer.padding_side = side
        if pad_token is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return answers


def generate_with_vllm(
    model_id: str,
    prompts: Sequence[dict[str, Any]],
    settings: GenerationSettings,
    chat_template_tokenizer: Any = None,
) -> list[str]:
    """The same with vLLM (``pip install vllm``; a GPU): one call, vLLM batches itself.

    The prompts go through the model's own chat template, or through
    ``chat_template_tokenizer``'s when given; a tokenizer without a template gets the plain
    user text, as in ``generate_answers``."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise MissingDependency("generate.backend vllm needs vLLM: pip install vllm") from error
    llm = LLM(model=model_id, seed=settings.seed)
    params = SamplingParams(
        temperature=settings.temperature,  # 0: greedy
        top_p=settings.top_p if settings.temperature > 0 else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    template = getattr(chat_template_tokenizer, "chat_template", None)
    if chat_template_tokenizer is not None and not template:
        texts = [render(chat_template_tokenizer, p["messages"]) for p in prompts]
        outputs = llm.generate(texts, params)
    else:
        outputs = llm.chat([p["messages"] for p in prompts], params, chat_template=template)
    return [o.outputs[0].text.strip() for o in outputs]


def vllm_available() -> bool:
    """Whether ``import vllm`` would find the package."""
    return importlib.util.find_spec("vllm") is not None


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": p["id"], "messages": [*p["messages"], {"role": "assistant", "content": a}]}
        for p, a in zip(prompts, answers, strict=True)
    ]
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    meta = {
        **provenance,
        "count": len(rows),
        "empty_answers": sum(not a for a in answers),
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
    rows = [json.loads(line) for line in _lines(path) if line.strip()]
    return rows, meta


def _read_partial(partial: Path, header: dict[str, Any]) -> dict[str, str]:
    """The answers kept in a partial file, checked against this run's ``header``. A last
    line cut off by the kill is dropped, and the file rewritten without it."""
    text = partial.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a row cut off mid-write; it is answered again
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    done: dict[str, str] = {}
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
            done[str(row["id"])] = row["answer"]
    return done


def uses_vllm(settings: GenerationSettings, model_id: str | None) -> bool:
    """Whether generation goes to vLLM: asked for, or ``auto`` with vLLM installed and the
    teacher given as a hub id or folder."""
    return settings.backend == "vllm" or (
        settings.backend == "auto" and model_id is not None and vllm_available()
    )


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
) -> Path:
    """Answer ``prompts`` with the teacher and write the dataset with ``write_generations``.

    Every finished batch is appended to ``<stem>.partial.jsonl``; a run killed and started
    again with the same prompts, settings and provenance answers only the prompts missing
    there (a changed ``batch_size`` or ``backend`` is fine). The partial file is removed
    once the dataset is written. vLLM answers when ``settings.backend`` is ``vllm``, or
    ``auto`` with vLLM installed and ``model_id`` (a hub id or folder) given.
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
    # what must match for a partial file to be resumed (JSON round-tripped, as read back)
    header = json.loads(
        json.dumps(
            {"settings": settings.model_dump(include=set(ANSWER_SETTINGS)), **provenance},
            default=str,
        )
    )
    done: dict[str, str] = {}
    if partial.exists():
        done = _read_partial(partial, header)
        unknown = set(done) - {str(p["id"]) for p in prompts}
        if unknown:
            raise ValueError(
                f"{partial} holds answers to prompts that are not in this prompt set "
                f"({sorted(unknown)[:3]}…); delete it to start over"
            )
        log(f"generate: resuming, {len(done)} of {len(prompts)} prompts answered")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"header": header}) + "\n", encoding="utf-8")
    todo = [p for p in prompts if str(p["id"]) not in done]
    started = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as handle:

        def keep(indices: list[int], answers: list[str]) -> None:
            for i, answer in zip(indices, answers, strict=True):
                handle.write(json.dumps({"id": todo[i]["id"], "answer": answer}) + "\n")
                done[str(todo[i]["id"])] = answer
            handle.flush()

        if todo and use_vllm:
            assert model_id is not None
            answers = generate_with_vllm(model_id, todo, settings, tokenizer)
            keep(list(range(len(todo))), answers)
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
