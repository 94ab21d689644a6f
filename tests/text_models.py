"""Tiny language-model parts for tests: a word-level tokenizer with a chat template, a
WordPiece tokenizer built from a text, and a Llama built from a config."""

from collections import Counter
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "a",
    "dog",
    "ran",
    "far",
    "what",
    "did",
    "do",
    "it",
    "answer",
    "is",
    "yes",
    "no",
]
SPECIAL = ["<unk>", "<pad>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB = len(SPECIAL) + len(WORDS)
PAD, EOS = 1, 2


def chat_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Whitespace-split words, ``<pad>`` = 1, ``<eos>`` = 2, and a chat template that writes
    ``<|role|> content <|end|>`` per turn."""
    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return tok


def tiny_llama(seed: int = 0, vocab: int = VOCAB, **config: object):
    """A 2-layer Llama (hidden 32) with seeded weights; ``config`` overrides fields."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **config}))


BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(text_file: Path, folder: Path, size: int = 400) -> Path:
    """A ``size``-token WordPiece tokenizer with BERT's special tokens, built from the text
    and saved in ``folder``: every character (alone and as a continuation ``##c``), then
    the most frequent words. Built rather than trained: the tokenizers trainer breaks ties
    between equally frequent merges differently in each process, so each test process had
    another vocabulary (and the tiny-model tests other numbers)."""
    from tokenizers import normalizers
    from tokenizers import pre_tokenizers as pre

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre.BertPreTokenizer()
    text = normalizer.normalize_str(Path(text_file).read_text())
    counts = Counter(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    characters = sorted({c for word in counts for c in word})
    vocab = [*BERT_SPECIALS, *characters, *(f"##{c}" for c in characters)]
    by_frequency = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    vocab += [word for word, _ in by_frequency if word not in vocab][: size - len(vocab)]
    ids = {token: i for i, token in enumerate(vocab)}
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizer
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", eos_token="[SEP]",
    )  # fmt: skip
    tokenizer.save_pretrained(folder)
    return Path(folder)
