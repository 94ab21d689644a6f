"""Tiny language-model parts for tests: a word-level tokenizer with a chat template, and
a Llama built from a config."""

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
