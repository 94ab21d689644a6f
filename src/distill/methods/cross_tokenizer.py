"""Distilling across tokenizers: align the two tokenisations of the same text, map the
tokens both vocabularies share, and combine exact KD with ULD (``losses.cross_tokenizer``).

**Alignment** (``align_spans``). Both tokenizers cut the same text; each token covers a
character span (the tokenizer's offsets). Walking both token lists, a *group* closes each
time the two reach the same character end: the group's student tokens and teacher tokens
cover the same characters. Whitespace does not count (byte-level BPE puts the space in the
next token's span, WordPiece leaves it out), and a token of whitespace only joins the next
group. Groups are one-to-one (the same piece of text is one token in both), or
one-to-many, many-to-one, many-to-many.

**Which position predicts a group.** In a causal LM the logits at position k − 1 predict
token k, so a group whose first tokens are at k (student) and m (teacher) is predicted by
student row k − 1 and teacher row m − 1; a group at the start of the sequence has no
prediction and is left out.

**Shared vocabulary** (``shared_vocabulary``). Tokens are the same when their text is:
each token is turned into the text it stands for (``convert_tokens_to_string``), with the
word-start marker of each scheme made one leading space (byte-level ``Ġ``, SentencePiece
``▁``; a WordPiece token without ``##`` starts a word). A text that two tokens of one
vocabulary share is left out (ambiguous). Identical vocabularies map every token to
itself.

**Loss**: ``losses.cross_tokenizer.hybrid_kd`` (exact KL on the shared tokens of one-to-one
groups, ULD on merged spans elsewhere) and ``cross_tokenizer_kd``, its batch form, which
reads the ``Alignment`` a ``teachers.CrossTokenizer`` hands over with its logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from distill.losses.cross_tokenizer import Group

Span = tuple[int, int]


def _content(span: Span, text: str) -> Span:
    """The span without its leading and trailing whitespace (empty: (end, end))."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else (end, end)


def align_spans(student: Sequence[Span], teacher: Sequence[Span], text: str) -> list[Group]:
    """The groups of two tokenisations of ``text`` (each a list of character spans)."""
    s_spans = [_content(span, text) for span in student]
    t_spans = [_content(span, text) for span in teacher]
    groups: list[Group] = []
    i = j = 0
    s_group: list[int] = []
    t_group: list[int] = []
    while i < len(s_spans) or j < len(t_spans):
        s_end = s_spans[i][1] if i < len(s_spans) else None
        t_end = t_spans[j][1] if j < len(t_spans) else None
        empty_s = s_end is not None and s_spans[i][0] == s_end  # whitespace: next group
        empty_t = t_end is not None and t_spans[j][0] == t_end
        if empty_s or (s_end is not None and (t_end is None or s_end < t_end)):
            s_group.append(i)
            i += 1
            continue
        if empty_t or (t_end is not None and (s_end is None or t_end < s_end)):
            t_group.append(j)
            j += 1
            continue
        s_group.append(i)
        t_group.append(j)
        i, j = i + 1, j + 1
        groups.append(Group(tuple(s_group), tuple(t_group)))
        s_group, t_group = [], []
    if s_group or t_group:  # text one side covers and the other does not (truncation)
        groups.append(Group(tuple(s_group), tuple(t_group)))
    return groups


def token_texts(tokenizer: Any) -> dict[int, str]:
    """Each token id's text, its word-start marker written as one leading space."""
    vocab = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    wordpiece = (
        type(backend.model).__name__ == "WordPiece"
        if backend is not None
        else sum(token.startswith("##") for token in vocab) > len(vocab) // 10
    )
    texts = {}
    for token, index in vocab.items():
        if wordpiece:  # "##x" continues a word; any other token starts one
            text = token[2:] if token.startswith("##") else " " + token
        elif token.startswith("▁"):  # SentencePiece
            text = " " + token[1:].replace("▁", " ")
        else:  # byte-level BPE ("Ġ" is a space) and the rest
            text = tokenizer.convert_tokens_to_string([token])
        texts[index] = text
    return texts


def shared_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> tuple[Tensor, Tensor]:
    """(student ids, teacher ids) of the tokens both vocabularies have, pair by pair."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab == teacher_vocab:
        ids = torch.tensor(sorted(student_vocab.values()))
        return ids, ids.clone()

    def unique(texts: dict[int, str]) -> dict[str, int]:
        seen: dict[str, list[int]] = {}
        for index, text in texts.items():
            seen.setdefault(text, []).append(index)
        return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}

    student_texts = unique(token_texts(student_tokenizer))
    teacher_texts = unique(token_texts(teacher_tokenizer))
    shared = sorted(set(student_texts) & set(teacher_texts))
    return (
        torch.tensor([student_texts[t] for t in shared], dtype=torch.long),
        torch.tensor([teacher_texts[t] for t in shared], dtype=torch.long),
    )
