"""Token-level distillation through the LM heads, without materialising full logits.

``lm_head_kd`` takes the *hidden states* that enter the student's and the teacher's LM
heads, and the heads' weights, instead of logits. It walks the selected tokens in chunks
(tokens the mask or the labels leave out never enter the heads); for each chunk it
computes both models' logits, the divergence (and optionally the label cross-entropy),
and the student's gradient with respect to that chunk's logits, which it turns at once
into gradients for the hidden states and the head weight. Peak memory is a few
(chunk × vocab) buffers instead of (tokens × vocab) for each model and its softmax. The
same per-chunk divergences as ``losses.logits`` are used, so the two agree exactly.

Reduction: the sum over selected tokens divided by ``global_count`` (default: the number
of selected tokens here). Pass the token count of the whole optimizer step — across
accumulation micro-batches and ranks — to make the result independent of how the tokens
were split. Identical for any ``chunk_size``.

``compile=True`` (or a backend name) runs each chunk's softmaxes, divergence and
cross-entropy, forward and backward, as ``torch.compile``d kernels; the matrix products stay
as they are. The last chunk's other size compiles once more, with a dynamic token count, and
nothing after it does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from distill.losses.logits import DIVERGENCE_OPTIONS, cross_entropy, divergence_by_name
from distill.losses.sparse import sparse_divergence
from distill.outputs import IGNORE_INDEX, TopK

Divergence = Literal["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


def _softcap(logits: Tensor, cap: float | None) -> Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = hidden @ weight.T
    return out if bias is None else out + bias


class _ChunkedLMHead(torch.autograd.Function):
    """Σ over chunks of ``chunk_loss(student_logits[rows], rows) · |rows| / count``, with
    the student's gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, selected, chunk_loss, chunk, count):
        needs_grad = any(ctx.needs_input_grad[:3])
        acc = torch.promote_types(s_hidden.dtype, torch.float32)  # float32, or float64
        grad_hidden = torch.zeros_like(s_hidden) if needs_grad else None
        grad_weight = torch.zeros_like(s_weight, dtype=acc) if needs_grad else None
        grad_bias = (
            torch.zeros_like(s_bias, dtype=acc) if needs_grad and s_bias is not None else None
        )
        total = torch.zeros((), dtype=acc, device=s_hidden.device)
        # only the selected tokens enter the heads: chunks are full chunks of those
        index = selected.nonzero().squeeze(1)
        for start in range(0, index.numel(), chunk):
            rows = index[start : start + chunk]
            h = s_hidden[rows]
            with torch.enable_grad():
                logits = _logits(h, s_weight, s_bias).to(acc).detach().requires_grad_(needs_grad)
                value = chunk_loss(logits, rows) * (rows.numel() / count)
                if needs_grad:
                    (grad_logits,) = torch.autograd.grad(value, logits)
            total += value.detach()
            if needs_grad:
                g = grad_logits.to(s_weight.dtype)
                grad_hidden[rows] = g @ s_weight
                grad_weight += (g.T @ h).to(acc)
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (s_weight.dtype, None if s_bias is None else s_bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scale = grad_output
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(weight_dtype),
            None if grad_bias is None else (grad_bias * scale).to(bias_dtype),
            *([None] * 4),
        )


def dense_chunk(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor | None,
    kd_weight: float,
    ce_weight: float,
    temperature: float,
    divergence: str,
    beta: float,
    skew: float,
    softcap: float | None,
) -> Tensor:
    """One chunk's ``kd_weight · D_T(z_s, z_t) + ce_weight · CE(z_s, y)`` from both models'
    raw logits (softcapped here); no CE term when ``labels`` is None."""
    student = _softcap(student, softcap)
    measure = divergence_by_name(divergence, beta, skew)
    value = kd_weight * measure(
        student, _softcap(teacher.to(student.dtype), softcap), temperature=temperature
    )
    return value if labels is None else value + ce_weight * cross_entropy(student, labels)


def sparse_chunk(
    student: Tensor,
    ids: Tensor,
    logprobs: Tensor,
    tail: Tensor,
    topk_temperature: float,
    labels: Tensor | None,
    kd_weight: float,
    ce_weight: float,
    temperature: float,
    divergence: str,
    beta: float,
    skew: float,
    softcap: float | None,
) -> Tensor:
    """One chunk's ``kd_weight · D_T(q̄ ‖ p̄) + ce_weight · CE`` against a top-k teacher."""
    student = _softcap(student, softcap)
    option = DIVERGENCE_OPTIONS.get(divergence)
    options = {} if option is None else {option: beta if option == "beta" else skew}
    teacher = TopK(ids, logprobs, tail, topk_temperature)
    value = kd_weight * sparse_divergence(
        student, teacher, divergence=divergence, temperature=temperature, **options
    )
    return value if labels is None else value + ce_weight * cross_entropy(student, labels)


@functools.cache
def _compiled(body: Callable[..., Tensor], backend: str) -> Callable[..., Tensor]:
    """``body`` compiled once per process and backend (floats stay inputs, not constants)."""
    return torch.compile(body, backend=backend)


def chunk_body(body: Callable[..., Tensor], compile: bool | str) -> Callable[..., Tensor]:
    """``body`` as is, or compiled with ``compile`` (True: inductor, or a backend name)."""
    if not compile:
        return body
    return _compiled(body, "inductor" if compile is True else str(compile))


def _selection(
    tokens: int, device: torch.device, labels: Tensor | None, mask: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Which flattened tokens count (mask, and labels not -100), and the flat labels."""
    selected = torch.ones(tokens, dtype=torch.bool, device=device)
    if mask is not None:
        selected = selected & mask.reshape(-1).bool()
    flat_labels = None
    if labels is not None:
        flat_labels = labels.reshape(-1)
        selected = selected & (flat_labels != IGNORE_INDEX)
    return selected, flat_labels


def _chunked_head_loss(
    chunk_loss: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    s_hidden: Tensor,
    head: Tensor,
    bias: Tensor | None,
    labels: Tensor | None,
    mask: Tensor | None,
    ce_weight: float,
    chunk_size: int,
    global_count: int | None,
) -> Tensor:
    """``chunk_loss(student_logits, rows, labels)`` summed over the selected tokens (mask,
    labels not -100), chunk by chunk through the student's head ``head`` (already cut to the
    vocabulary), divided by ``global_count`` (default: the selected tokens). ``labels`` is
    None when there is no cross-entropy term."""
    selected, flat_labels = _selection(s_hidden.shape[0], s_hidden.device, labels, mask)
    count = int(selected.sum()) if global_count is None else int(global_count)
    if count == 0:
        return (s_hidden.sum() + head.sum()) * 0.0

    def rows_loss(student: Tensor, rows: Tensor) -> Tensor:
        chunk_labels = flat_labels[rows] if ce_weight and flat_labels is not None else None
        return chunk_loss(student, rows, chunk_labels)

    if bias is not None:
        bias = bias[: head.shape[0]]
    return _ChunkedLMHead.apply(s_hidden, head, bias, selected, rows_loss, chunk_size, count)


def lm_head_kd(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    *,
    divergence: Divergence = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    vocab_size: int | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
    global_count: int | None = None,
    compile: bool | str = False,
) -> Tensor:
    """Token-level KD between two LM heads, chunk by chunk over tokens.

    Formula: with z_s = softcap(h_s W_sᵀ + b_s) and z_t = softcap(h_t W_tᵀ + b_t) over the
    first ``vocab_size`` columns, ``softcap(z) = c · tanh(z / c)`` when ``softcap=c``,
    ``loss = (1 / count) Σ_selected [kd_weight · D_T(z_s, z_t) + ce_weight · CE(z_s, y)]``
    where D is ``kl`` (forward, Hinton), ``reverse_kl`` (MiniLLM), ``jsd`` with ``beta``
    (GKD), ``skew_kl`` / ``skew_reverse_kl`` with ``skew`` (DistiLLM) or ``tvd``, each as
    defined in ``losses.logits`` (T² scaling for the KL family).
    Reduction: sum over selected tokens / ``global_count`` (default: selected here).
    Papers: Hinton et al. 2015; Agarwal et al. 2024 (GKD); Ko et al. 2024 (DistiLLM);
    Gu et al. 2024 (MiniLLM). Chunked LM-head losses as in Liger-Kernel.

    Shapes: hidden (N, H) or (B, T, H); heads (V, H_s) and (V_t, H_t); ``labels`` and
    ``mask`` with the hidden states' leading shape (the caller shifts labels for causal
    LMs). Selected tokens: ``mask`` (all if None) and, when ``labels`` is given, labels not
    equal to -100. A teacher head padded beyond the real vocabulary (Qwen pads to a
    multiple of 128) is handled by ``vocab_size=<tokenizer size>``: later columns of either
    head are ignored. Different head sizes without ``vocab_size`` are refused.
    """
    v_s, v_t = student_head.shape[0], teacher_head.shape[0]
    if vocab_size is None:
        if v_s != v_t:
            raise ValueError(
                f"student head has {v_s} rows, teacher head {v_t}: the vocabularies differ. "
                "If one head is only padded (same tokenizer), pass vocab_size=<tokenizer "
                "size>; different tokenizers cannot be distilled token by token"
            )
        vocab_size = v_s
    if vocab_size > min(v_s, v_t):
        raise ValueError(f"vocab_size={vocab_size} exceeds a head's rows ({v_s}, {v_t})")
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    s_hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    t_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    if s_hidden.shape[0] != t_hidden.shape[0]:
        raise ValueError(
            f"student has {s_hidden.shape[0]} tokens, teacher {t_hidden.shape[0]}: they must "
            "be the same positions of the same sequences"
        )
    divergence_by_name(divergence, beta, skew)  # an unknown name fails here, before any work
    t_weight = teacher_head[:vocab_size].detach()
    t_bias = None if teacher_bias is None else teacher_bias[:vocab_size].detach()
    body = chunk_body(dense_chunk, compile)

    def chunk_loss(student: Tensor, rows: Tensor, chunk_labels: Tensor | None) -> Tensor:
        teacher = _logits(t_hidden[rows], t_weight, t_bias)
        return body(
            student,
            teacher,
            chunk_labels,
            kd_weight,
            ce_weight,
            temperature,
            divergence,
            beta,
            skew,
            softcap,
        )

    return _chunked_head_loss(
        chunk_loss,
        s_hidden,
        student_head[:vocab_size],
        student_bias,
        labels,
        mask,
        ce_weight,
        chunk_size,
        global_count,
    )


def lm_head_sparse_kd(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_topk: TopK,
    *,
    divergence: Divergence = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    student_bias: Tensor | None = None,
    vocab_size: int | None = None,
    softcap: float | None = None,
    chunk_size: int = 1024,
    global_count: int | None = None,
    compile: bool | str = False,
) -> Tensor:
    """Token-level KD from a top-k teacher (a teacher cache) through the student's LM head,
    chunk by chunk over tokens, without the student's full logits.

    Formula: ``loss = (1 / count) Σ_selected [kd_weight · D_T(q̄ ‖ p̄) + ce_weight · CE]``
    with ``p = softmax(softcap(h_s W_sᵀ + b_s) / T)`` over the first ``vocab_size`` columns
    and D the divergence on the k + 1 buckets of ``losses.sparse`` (top-k, then the tail
    mass: exact at k = vocabulary, a lower bound below). ``teacher_topk`` holds (..., k)
    ids and log-probabilities and (...) tail log-masses with the hidden states' leading
    shape, at ``temperature``. Reduction: as ``lm_head_kd``. T² scaling: yes (not ``tvd``).
    Papers: Hinton et al. 2015; Agarwal et al. 2024 (GKD); Gu et al. 2024 (MiniLLM).
    """
    if ce_weight and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vocab_size = student_head.shape[0] if vocab_size is None else vocab_size
    if vocab_size > student_head.shape[0]:
        raise ValueError(f"vocab_size={vocab_size} exceeds the head's {student_head.shape[0]} rows")
    s_hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    k = teacher_topk.ids.shape[-1]
    if teacher_topk.ids.numel() != s_hidden.shape[0] * k:
        raise ValueError(
            f"the teacher's top-k covers {teacher_topk.ids.numel() // k} tokens, the student "
            f"has {s_hidden.shape[0]}: they must be the same positions of the same sequences"
        )
    if int(teacher_topk.ids.max()) >= vocab_size:
        raise ValueError(
            f"the teacher's top-k holds token id {int(teacher_topk.ids.max())}, beyond the "
            f"student's vocabulary of {vocab_size}: the cache was built with another tokenizer"
        )
    divergence_by_name(divergence, beta, skew)  # an unknown name fails here, before any work
    body = chunk_body(sparse_chunk, compile)

    def chunk_loss(student: Tensor, rows: Tensor, chunk_labels: Tensor | None) -> Tensor:
        teacher = teacher_topk.select(rows)
        return body(
            student,
            teacher.ids,
            teacher.logprobs,
            teacher.tail,
            teacher.temperature,
            chunk_labels,
            kd_weight,
            ce_weight,
            temperature,
            divergence,
            beta,
            skew,
            softcap,
        )

    return _chunked_head_loss(
        chunk_loss,
        s_hidden,
        student_head[:vocab_size],
        student_bias,
        labels,
        mask,
        ce_weight,
        chunk_size,
        global_count,
    )
