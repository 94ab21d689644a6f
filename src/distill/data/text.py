"""Text data for language-model distillation: packed plain text and chat/instruction rows.

Rows are dicts the engine reads directly: ``input_ids`` (L,), ``labels`` (L,) holding the
*next* token at each position (so ``logits[t]`` is scored against ``labels[t]``, no shift
needed downstream), ``loss_mask`` (L,) and, for padded rows, ``attention_mask``.

- ``read_documents``: ``.txt`` files (documents separated by blank lines) and ``.jsonl``
  files (a ``text`` field, or ``prompt``/``completion``, or chat ``messages``).
- ``PackedText``: documents tokenised, joined with the EOS token and cut into blocks of
  ``seq_len + 1`` tokens (every token is trained on; no padding).
- ``ChatExamples``: one conversation per row through the tokenizer's chat template; only
  the answer (the last assistant turn, or ``completion``) is scored; padded to ``seq_len``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from distill.errors import DataError, MissingDependency
from distill.outputs import IGNORE_INDEX


def read_documents(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records from .txt / .jsonl files: ``{"text": ...}``, ``{"prompt", "completion"}`` or
    ``{"messages": [...]}``; a clear error names the file and line that fits none."""
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    records: list[dict[str, Any]] = []
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"text file {file} does not exist")
        if file.suffix == ".jsonl":
            # split on newlines only: str.splitlines would also split inside JSON strings
            # holding U+2028, U+2029 or U+0085, which JSON leaves unescaped
            lines = file.read_text(encoding="utf-8").split("\n")
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{file}:{number}: not valid JSON ({error})") from None
                if not isinstance(record, dict) or not (
                    "text" in record or "messages" in record or "prompt" in record
                ):
                    raise DataError(
                        f"{file}:{number}: a record needs 'text', 'messages' or "
                        "'prompt'/'completion'"
                    )
                records.append(record)
        else:
            blocks = [b.strip() for b in file.read_text().split("\n\n")]
            records += [{"text": b} for b in blocks if b]
    return records


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; set tokenizer.eos_token")
    return int(eos)


class PackedText(Dataset):
    """Plain-text documents packed into blocks of ``seq_len`` inputs (+1 for the labels)."""

    def __init__(self, records: Sequence[dict[str, Any]], tokenizer: Any, seq_len: int) -> None:
        texts = [r["text"] for r in records if "text" in r]
        if not texts:
            raise DataError("no 'text' records to pack")
        eos = _eos_id(tokenizer)
        stream: list[int] = []
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            stream += [*ids, eos]
        blocks = len(stream) // (seq_len + 1)
        if blocks == 0:
            raise DataError(
                f"{len(stream)} tokens cannot fill one block of seq_len + 1 = {seq_len + 1}"
            )
        self.blocks = torch.tensor(stream[: blocks * (seq_len + 1)]).view(blocks, seq_len + 1)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        block = self.blocks[index]
        labels = block[1:].clone()
        return {
            "input_ids": block[:-1],
            "labels": labels,
            "loss_mask": torch.ones_like(labels, dtype=torch.bool),
            "example_id": torch.tensor(index),
        }


def _conversation(record: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt messages, full messages) of a chat or prompt/completion record."""
    if "messages" in record:
        messages = list(record["messages"])
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError("a 'messages' record must end with an assistant turn (the answer)")
        return messages[:-1], messages
    prompt = [{"role": "user", "content": record["prompt"]}]
    return prompt, [*prompt, {"role": "assistant", "content": record.get("completion", "")}]


def prompt_text(record: dict[str, Any]) -> str:
    """The prompt of a chat or prompt/completion record as plain text: its turns before the
    answer, one per line."""
    return "\n".join(str(turn.get("content", "")) for turn in _conversation(record)[0])


def is_chat_record(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a conversation (messages, or prompt/completion)."""
    return "messages" in record or "prompt" in record


def render_chat(record: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prompt ids with the generation prompt, ids of the whole chat) of one record, by the
    tokenizer's chat template, untruncated; the first must start the second."""
    prompt, full = _conversation(record)
    prompt_ids = _ids(
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    )
    full_ids = _ids(tokenizer.apply_chat_template(full, tokenize=True))
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError("the chat template renders the prompt differently inside the full chat")
    return prompt_ids, full_ids


class ChatExamples(Dataset):
    """One conversation per row; the loss covers the answer tokens only. ``domain_of``
    (a record → the index of its teacher) adds each row's ``domain``, which routes it."""

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        tokenizer: Any,
        seq_len: int,
        domain_of: Callable[[dict[str, Any]], int] | None = None,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("the tokenizer has no chat template; set tokenizer.chat_template")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)
        self.rows = []
        for record in records:
            if "text" in record and not is_chat_record(record):
                continue
            prompt_ids, full_ids = render_chat(record, tokenizer)
            ids = torch.tensor(full_ids[: seq_len + 1])
            labels = ids[1:].clone()
            labels[: max(0, len(prompt_ids) - 1)] = IGNORE_INDEX
            inputs = ids[:-1]
            length = inputs.shape[0]
            pad_len = seq_len - length
            self.rows.append(
                {
                    "input_ids": torch.cat([inputs, torch.full((pad_len,), pad)]),
                    "attention_mask": torch.cat(
                        [
                            torch.ones(length, dtype=torch.long),
                            torch.zeros(pad_len, dtype=torch.long),
                        ]
                    ),
                    "labels": torch.cat([labels, torch.full((pad_len,), IGNORE_INDEX)]),
                }
            )
            self.rows[-1]["loss_mask"] = self.rows[-1]["labels"] != IGNORE_INDEX
            if domain_of is not None:
                self.rows[-1]["domain"] = torch.tensor(domain_of(record))
        if not self.rows:
            raise DataError("no chat or prompt/completion records")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.rows[index], "example_id": torch.tensor(index)}


def _ids(value: Any) -> list[int]:
    """apply_chat_template may return a list, a tensor or a BatchEncoding."""
    if hasattr(value, "keys") and "input_ids" in value:
        value = value["input_ids"]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value)


def load_hf_dataset(name: str, split: str = "train", **kwargs: Any) -> list[dict[str, Any]]:
    """Records from a Hugging Face ``datasets`` dataset (needs ``pip install datasets``)."""
    try:
        import datasets
    except ImportError as error:
        raise MissingDependency(
            "Hugging Face datasets are read with: pip install datasets"
        ) from error
    return [dict(row) for row in datasets.load_dataset(name, split=split, **kwargs)]


def pydoc_records() -> list[dict[str, Any]]:
    """CPython's help topics (``pydoc_data.topics``): about 465k characters of English
    technical prose that ships with every Python, so it is text on any machine, offline."""
    from pydoc_data.topics import topics  # here: a 0.5 MB module only this source reads

    return [{"text": topics[key]} for key in sorted(topics)]


def pydoc_prompts() -> list[dict[str, Any]]:
    """One question per CPython help topic (``pydoc_data.topics``), e.g. "Explain the
    Python help topic `with` briefly, with a short example.": 79 prompts on any machine."""
    from pydoc_data.topics import topics  # here: a 0.5 MB module only this source reads

    return [
        {
            "id": key,
            "messages": [
                {
                    "role": "user",
                    "content": f"Explain the Python help topic `{key}` briefly, with a short "
                    "example.",
                }
            ],
        }
        for key in sorted(topics)
    ]


def text_records(source: str) -> list[dict[str, Any]]:
    """Records for a recipe's ``data.source``: ``pydoc``, ``hf:<dataset>[:<split>]``, or a
    .txt/.jsonl file or a folder of them."""
    if source == "pydoc":
        return pydoc_records()
    if source.startswith("hf:"):
        name, _, split = source.removeprefix("hf:").partition(":")
        return load_hf_dataset(name, split or "train")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"data.source {path} holds no .txt or .jsonl files")
        return read_documents(files)
    if not path.is_file():
        raise FileNotFoundError(
            f"data.source {source!r} is neither 'pydoc', 'hf:<dataset>', a file nor a folder"
        )
    return read_documents(path)


class MaskedBlocks(Dataset):
    """Masked-language-model rows (BERT, Devlin et al. 2019): documents tokenised, joined
    with the separator token and cut into blocks of ``seq_len`` tokens framed by
    [CLS] … [SEP]; ``mlm_probability`` of the inner tokens are chosen, and of those 80%
    become [MASK], 10% a random token and 10% stay. ``labels`` holds the original token at
    chosen positions and -100 elsewhere. The choice is fixed per block by ``seed`` (static
    masking), so evaluation is repeatable and a resumed run sees the same rows.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        tokenizer: Any,
        seq_len: int,
        mlm_probability: float = 0.15,
        seed: int = 0,
    ) -> None:
        special = ("cls_token_id", "sep_token_id", "mask_token_id")
        missing = [name for name in special if getattr(tokenizer, name, None) is None]
        if missing:
            raise DataError(
                f"masked-LM data needs a tokenizer with {', '.join(missing)} (a BERT-style "
                "tokenizer); this one has none"
            )
        if not 0 < mlm_probability < 1:
            raise DataError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        stream: list[int] = []
        for record in records:
            stream += tokenizer(record["text"], add_special_tokens=False)["input_ids"]
            stream.append(tokenizer.sep_token_id)
        inner = seq_len - 2
        if inner < 1 or len(stream) < inner:
            raise DataError(f"{len(stream)} tokens of text do not fill one block of {seq_len}")
        self.blocks = torch.tensor(stream[: len(stream) // inner * inner]).view(-1, inner)
        self.cls, self.sep, self.mask = (getattr(tokenizer, name) for name in special)
        self.vocab_size = len(tokenizer)
        self.mlm_probability, self.seed = mlm_probability, seed

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        tokens = self.blocks[index]
        chosen = torch.rand(tokens.shape, generator=generator) < self.mlm_probability
        roll = torch.rand(tokens.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, tokens.shape, generator=generator)
        corrupted = torch.where(chosen & (roll < 0.8), self.mask, tokens)
        corrupted = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, corrupted)
        ignore = torch.full((1,), IGNORE_INDEX)
        return {
            "input_ids": torch.cat([torch.tensor([self.cls]), corrupted, torch.tensor([self.sep])]),
            "labels": torch.cat([ignore, torch.where(chosen, tokens, IGNORE_INDEX), ignore]),
            "example_id": torch.tensor(index),
        }
