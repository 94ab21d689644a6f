"""The doctor's checks of what language-model distillation reads before any logit: the
vocabularies, the chat template and special tokens, and the rows' lengths.

Each check measures, compares with a stated threshold and returns a ``Finding`` with the
fix, like the classic five (``doctor.checks``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from distill.doctor.checks import Finding, Verdict

PROBE_CHAT = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
]
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


def same_id_share(tokenizer: Any, other: Any) -> float:
    """The share of ``tokenizer``'s tokens that ``other`` has under the same id."""
    vocab, others = tokenizer.get_vocab(), other.get_vocab()
    return sum(others.get(token) == index for token, index in vocab.items()) / max(len(vocab), 1)


def _verdict(problems: list[str], warnings: list[str]) -> Verdict:
    return "problem" if problems else "warning" if warnings else "ok"


def vocabulary_check(
    tokenizer: Any,
    *,
    student_rows: int,
    teacher_rows: int | None,
    own_tokenizers: dict[str, Any],
    cross_tokenizer: bool = False,
    kd_term: str | None = None,
    vocab_option: int | None = None,
    padded_mass: float | None = None,
    max_padded_mass: float = 1e-3,
) -> Finding:
    """Do teacher, student and data speak the same vocabulary?

    Measured: the size of the data's tokenizer (n) and of each model's output head; for a
    model whose own tokenizer is not the data's, the share of tokens it has under the same
    id; the teacher's mean probability on the ids of a head padded beyond n. ``problem``:
    a model reads the ids of another tokenizer (below 100% at the same id) when the recipe
    does not distil across tokenizers; a head with fewer rows than n; heads of different
    sizes that the KD term would compare without ``options.vocab_size``. ``warning``: the
    teacher puts more than ``max_padded_mass`` on padded ids that no text holds."""
    n = len(tokenizer)
    parts = [f"data tokenizer {n:,} tokens, student head {student_rows:,} rows"]
    if teacher_rows is not None:
        parts[0] += f", teacher head {teacher_rows:,}"
    problems: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    shares = {}
    for role, own in own_tokenizers.items():
        if own.get_vocab() == tokenizer.get_vocab():
            continue
        shares[role] = share = same_id_share(tokenizer, own)
        described = (
            f"the {role}'s own tokenizer ({len(own):,} tokens) has {100 * share:.1f}% of the "
            "data's tokens under the same id"
        )
        if role == "teacher" and cross_tokenizer:
            parts.append(described + "; cross-tokenizer KD aligns the two")
            continue
        problems.append(described + f": the {role} would read ids that mean other tokens")
        fixes.append(
            "set teacher.tokenizer to the teacher's own and distil with cross_tokenizer_kd "
            "(recipes/llm_cross_tokenizer.yaml)"
            if role == "teacher"
            else "give the student the data's tokenizer (student: {model: teacher} or an "
            "hf-config student), or set data.tokenizer to the student's"
        )
    if not cross_tokenizer:
        heads = {"student": student_rows, "teacher": teacher_rows}
        for role, rows in heads.items():
            if rows is not None and rows < n:
                problems.append(f"the {role} head has {rows:,} rows for {n:,} tokens")
                fixes.append(f"give the {role} a head of at least {n:,} rows (args.vocab_size)")
        if teacher_rows is not None and teacher_rows != student_rows and vocab_option is None:
            problems.append("the heads differ in size, which the KD term refuses")
            fixes.append(f"set objective.{kd_term or '<kd term>'}.options.vocab_size: {n}")
        if padded_mass is not None:
            parts.append(f"teacher mass on padded ids {100 * padded_mass:.3f}%")
            if padded_mass > max_padded_mass and vocab_option is None:
                warnings.append(
                    "the teacher puts mass on ids no text holds, which the student would learn"
                )
                fixes.append(f"set objective.{kd_term or '<kd term>'}.options.vocab_size: {n}")
    verdict = _verdict(problems, warnings)
    summary = "; ".join(parts + problems + warnings)
    return Finding(
        "vocabulary",
        verdict,
        summary,
        "; ".join(dict.fromkeys(fixes)) if fixes else "nothing to do",
        {
            "tokenizer_size": n,
            "student_rows": student_rows,
            "teacher_rows": teacher_rows,
            "same_id_share": shares,
            "padded_mass": padded_mass,
            "vocab_option": vocab_option,
        },
    )


def rendered(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    """The chat template's text for ``messages`` (None: no template, or it fails)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    except Exception:  # a template may insist on roles the probe lacks
        return None


def _special(tokenizer: Any) -> dict[str, Any]:
    return {name: getattr(tokenizer, name, None) for name in SPECIAL_TOKENS}


def template_check(
    tokenizer: Any,
    own_tokenizers: dict[str, Any],
    *,
    chat: bool,
    stop_share: float | None = None,
    cross_tokenizer: bool = False,
    min_stop_share: float = 0.9,
) -> Finding:
    """Do teacher and student read prompts and stop the way they were tuned to?

    Measured: the data tokenizer's chat template and each model's own on a probe
    conversation, their special tokens, and (chat rows) the share of answers that hold a
    token generation stops on. ``problem`` when chat rows are rendered in a template that
    is not a model's own (the teacher answers prompts in a foreign format; the student
    learns one it will not be served with), or when fewer than ``min_stop_share`` of the
    answers hold a stop token (the student never learns to stop). ``warning`` when special
    tokens differ (except a teacher that reads the text with its own tokenizer:
    ``cross_tokenizer``)."""
    mine = rendered(tokenizer, PROBE_CHAT)
    parts: list[str] = []
    problems: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    differing: dict[str, list[str]] = {}
    for role, own in own_tokenizers.items():
        theirs = rendered(own, PROBE_CHAT)
        if chat and theirs is not None and theirs != mine:
            problems.append(
                f"the rows use a chat template that is not the {role}'s own (probe renders "
                f"{mine!r} vs {theirs!r})"
            )
            fixes.append(
                f"render the data with the {role}'s template (data.tokenizer: the {role}'s, "
                "or copy its chat_template into the data tokenizer)"
            )
        names = [k for k, v in _special(own).items() if v != _special(tokenizer)[k]]
        if names and role == "teacher" and cross_tokenizer:  # its own text, its own tokens
            parts.append("the teacher reads the text with its own tokenizer and special tokens")
        elif names:
            differing[role] = names
            shown = ", ".join(
                f"{k} {_special(tokenizer)[k]!r} vs {_special(own)[k]!r}" for k in names
            )
            warnings.append(f"special tokens differ from the {role}'s own: {shown}")
            fixes.append("use one tokenizer's special tokens for data, teacher and student")
    if not own_tokenizers:
        parts.append("teacher and student read the data's tokenizer: one template, one set")
    if chat and mine is None:
        problems.append("chat rows but the data tokenizer has no usable chat template")
        fixes.append("set the tokenizer's chat_template")
    if stop_share is not None:
        parts.append(f"{100 * stop_share:.1f}% of the answers hold a token generation stops on")
        if stop_share < min_stop_share:
            problems.append("the student will rarely learn to stop")
            fixes.append(
                "end each answer with the eos token (a template that appends it), or make the "
                "end-of-turn token the eos_token / generation_config.eos_token_id"
            )
    if not chat:
        parts.append("packed text: no chat template is used")
    return Finding(
        "chat_template",
        _verdict(problems, warnings),
        "; ".join(parts + problems + warnings),
        "; ".join(dict.fromkeys(fixes)) if fixes else "nothing to do",
        {"probe": mine, "stop_share": stop_share, "special_tokens_differ": differing},
    )


def truncation_check(
    lengths: Sequence[tuple[int, int]] | None,
    seq_len: int,
    *,
    max_no_answer: float = 0.01,
    max_cut: float = 0.05,
    max_lost: float = 0.10,
) -> Finding:
    """Do the rows fit ``seq_len``? ``lengths`` are (prompt, whole chat) token counts per
    chat row, untruncated (None: packed text, where rows are blocks of running text).

    A row keeps its first ``seq_len + 1`` tokens. ``problem`` when more than
    ``max_no_answer`` of the rows keep no answer token (their prompt fills the row: they
    teach nothing) or more than ``max_lost`` of the answer tokens are cut; ``warning`` when
    more than ``max_cut`` of the answers lose their end (the student never sees it stop).
    The fix names the ``seq_len`` that holds 95% of the rows whole."""
    if not lengths:
        return Finding(
            "truncation",
            "ok",
            f"packed text: rows are blocks of {seq_len} tokens of running text; no answer to cut",
            "nothing to do",
            {"seq_len": seq_len},
        )
    keep = seq_len + 1
    rows = len(lengths)
    no_answer = sum(prompt >= min(full, keep) for prompt, full in lengths) / rows
    cut = sum(full > keep for _, full in lengths) / rows
    answers = sum(full - prompt for prompt, full in lengths)
    lost = sum(max(0, full - max(prompt, keep)) for prompt, full in lengths) / max(answers, 1)
    ordered = sorted(full for _, full in lengths)
    p95 = ordered[min(rows - 1, math.ceil(0.95 * rows) - 1)]
    fits = 8 * math.ceil((p95 - 1) / 8)
    measurements = {
        "seq_len": seq_len,
        "rows": rows,
        "no_answer_share": no_answer,
        "cut_share": cut,
        "answer_tokens_lost": lost,
        "p50": ordered[rows // 2],
        "p95": p95,
        "max": ordered[-1],
        "lengths": [full for _, full in lengths],
        "recommended_seq_len": fits,
    }
    summary = (
        f"{rows:,} chat rows, {ordered[rows // 2]} / {p95} / {ordered[-1]} tokens (median, "
        f"95th percentile, max) for seq_len {seq_len}: {100 * cut:.1f}% cut, "
        f"{100 * no_answer:.1f}% with no answer token left, {100 * lost:.1f}% of answer "
        "tokens lost"
    )
    fix = f"raise data.seq_len to {fits} (95% of the rows whole), or shorten the answers"
    if no_answer > max_no_answer or lost > max_lost:
        return Finding("truncation", "problem", summary, fix, measurements)
    if cut > max_cut:
        return Finding("truncation", "warning", summary, fix, measurements)
    return Finding("truncation", "ok", summary, "nothing to do", measurements)
