"""Sequence-level distillation data: the teacher answers prompts, written as a chat dataset.

Kim & Rush (2016) train the student on the teacher's own outputs instead of the references;
today's LLM distillation does the same with instructions and reasoning chains (Orca,
DeepSeek-R1's distilled models). Here: the prompts (``load_prompts``), rendering through
the tokenizer's chat template, and generation in length-sorted, left-padded batches with
transformers (``generate_answers``) or vLLM; ``methods.generated_data`` writes the
resumable, verified dataset.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import Progress
from torch import nn

from distill.data.text import pydoc_prompts
from distill.errors import MissingDependency

# settings that change the answers; a partial file written under others is not resumed
ANSWER_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed", "samples")


class GenerationSettings(BaseModel):
    """How the teacher answers."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1, description="the longest answer, in tokens")
    temperature: float = Field(0.7, ge=0, description="0: greedy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: the mass kept")
    batch_size: int = Field(8, ge=1, description="prompts answered together")
    seed: int = Field(0, description="the sampling's random numbers")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="auto: vLLM when it is installed and the teacher is a hub id or folder, "
        "else transformers' generate",
    )
    samples: int = Field(1, ge=1, description="answers per prompt (sampled: temperature > 0)")

    @model_validator(mode="after")
    def _sampled(self) -> GenerationSettings:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0: greedy answers are all alike")
        return self


def text_lines(path: Path) -> list[str]:
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
    record = {"id": row.get("id", fallback_id), "messages": messages}
    record |= {k: v for k, v in row.items() if k not in ("id", "messages", "prompt", "answer")}
    if "answer" in row:  # the reference a verifier checks the teacher's answer against
        if not isinstance(row["answer"], (str, int, float)) or isinstance(row["answer"], bool):
            raise ValueError(f"{where}: 'answer' must be text or a number")
        record["answer"] = row["answer"]
    return record


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
    for number, line in enumerate(text_lines(path), start=1):
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
    on_batch: Callable[[list[int], list[str], list[float]], None] | None = None,
    score: bool = False,
) -> list[str]:
    """The model's answer to each prompt (transformers ``generate``), in prompt order.

    Prompts are sorted by length and left-padded in batches of ``settings.batch_size``;
    the answer is the text of the new tokens before the first end token, stripped. The
    torch RNG is seeded with ``settings.seed`` inside a fork, so sampling is reproducible and
    the caller's RNG state is untouched. ``on_batch(indices, answers, logprobs)`` is called
    after each batch with the indices of its prompts; with ``score`` the log-probabilities
    are each answer's mean per token under the sampling distribution (0.0 without).
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
                    output_scores=score,
                    return_dict_in_generate=True,
                    **options,
                )
                sequences = output.sequences
                new = sequences[:, encoded["input_ids"].shape[1] :].tolist()
                kept = [_until_eos(tokens, eos) for tokens in new]
                done = tokenizer.batch_decode(kept, skip_special_tokens=True)
                logprobs = [0.0] * len(chunk)
                if score:
                    steps = model.compute_transition_scores(
                        sequences, output.scores, normalize_logits=True
                    )
                    logprobs = [
                        float(steps[row, : len(tokens)].mean()) if tokens else 0.0
                        for row, tokens in enumerate(kept)
                    ]
                for i, text in zip(chunk, done, strict=True):
                    answers[i] = text.strip()
                if on_batch is not None:
                    on_batch(chunk, [answers[i] for i in chunk], logprobs)
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
) -> tuple[list[str], list[float]]:
    """The same with vLLM (``pip install vllm``; a GPU): one call, vLLM batches itself; the
    answers and their mean log-probabilities per token (0.0 where vLLM gives none). Each
    prompt is seeded ``seed + its position``, so a prompt repeated for several samples gets
    different ones.

    The prompts go through the model's own chat template, or through
    ``chat_template_tokenizer``'s when given; a tokenizer without a template gets the plain
    user text, as in ``generate_answers``."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise MissingDependency("generate.backend vllm needs vLLM: pip install vllm") from error
    llm = LLM(model=model_id, seed=settings.seed)
    params = [
        SamplingParams(
            temperature=settings.temperature,  # 0: greedy
            top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed + position,
        )
        for position in range(len(prompts))
    ]
    template = getattr(chat_template_tokenizer, "chat_template", None)
    if chat_template_tokenizer is not None and not template:
        texts = [render(chat_template_tokenizer, p["messages"]) for p in prompts]
        outputs = llm.generate(texts, params)
    else:
        outputs = llm.chat([p["messages"] for p in prompts], params, chat_template=template)
    answers = [o.outputs[0].text.strip() for o in outputs]
    logprobs = [
        (getattr(o.outputs[0], "cumulative_logprob", None) or 0.0)
        / max(1, len(o.outputs[0].token_ids))
        for o in outputs
    ]
    return answers, logprobs


def vllm_available() -> bool:
    """Whether ``import vllm`` would find the package."""
    return importlib.util.find_spec("vllm") is not None


def uses_vllm(settings: GenerationSettings, model_id: str | None) -> bool:
    """Whether generation goes to vLLM: asked for, or ``auto`` with vLLM installed and the
    teacher given as a hub id or folder."""
    return settings.backend == "vllm" or (
        settings.backend == "auto" and model_id is not None and vllm_available()
    )
