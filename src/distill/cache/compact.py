"""The compact top-k encoding of a teacher cache (``Layout(encoding="compact")``).

Per position, the k entries sorted by rank r = 1..k are stored as

- ``ids_packed``: the token ids bit-packed at b = ⌈log2 V⌉ bits each (uint8 bytes);
- ``curve``: d coefficients (float16) of the log-probabilities as a polynomial in log r,
  ``f(r) = Σ_j c_j (log r)^j`` for j = 1..d, fitted by least squares (DistillKit's idea of
  a curve over the rank);
- ``residual``: what the curve misses, ``log p_r − f(r)``, quantised to ``residual_bits``
  signed levels of ``scale / (2^(bits−1) − 1)``, bit-packed; ``scale`` (float16) is the row's
  largest residual;
- ``tail``: the log of the mass outside the top-k (float16), as in the plain encoding.

Rebuilt: ``log p̂_r = f(r) + residual_r + c``, the constant c chosen so that the k
probabilities sum to exactly 1 − exp(tail): the tail and the kept mass are the stored ones,
only the split of the kept mass among the k tokens is approximated. Bytes per position:
⌈k·b/8⌉ + ⌈k·bits/8⌉ + 2·d + 2 (scale) + 2 (tail); for a vocabulary below 65,536 (b = 16),
d = 2 and 3 bits that is 2.44 bytes per kept entry at k = 128, 2.50 at k = 64 and 2.88 at
k = 16 (2.38 there with ``residual_bits=0``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from distill.outputs import TopK


def id_bits(vocab_size: int) -> int:
    """Bits per token id: ⌈log2 V⌉."""
    return max(1, math.ceil(math.log2(vocab_size)))


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers (N, k) below 2**bits as (N, ⌈k·bits/8⌉) bytes, most significant
    bit first; each row on its own, so a row is read without its neighbours."""
    values = np.asarray(values, dtype=np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    bit_planes = ((values[..., None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bit_planes.reshape(values.shape[0], -1), axis=-1)


def unpack(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The inverse of ``pack``: (N, k) int64."""
    bit_planes = np.unpackbits(np.asarray(packed), axis=-1, count=k * bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64)).astype(np.int64)
    return bit_planes.reshape(packed.shape[0], k, bits).astype(np.int64) @ weights


def basis(k: int, degree: int) -> Tensor:
    """(k, degree): (log r)^j for ranks r = 1..k and j = 1..degree, in float64."""
    log_rank = torch.arange(1, k + 1, dtype=torch.float64).log()
    return torch.stack([log_rank**j for j in range(1, degree + 1)], dim=-1)


def kept_log_mass(tail: Tensor) -> Tensor:
    """log(1 − exp(tail)): the log of the mass the top-k holds (never -inf)."""
    return torch.log((-torch.expm1(tail.double())).clamp_min(1e-30))


def normalise(logprobs: Tensor, tail: Tensor) -> Tensor:
    """``logprobs`` shifted so that their probabilities sum to 1 − exp(tail)."""
    return (
        logprobs - torch.logsumexp(logprobs, dim=-1, keepdim=True) + kept_log_mass(tail)[..., None]
    )


def encode_topk(
    target: TopK, vocab_size: int, degree: int = 2, residual_bits: int = 3
) -> dict[str, np.ndarray]:
    """The compact arrays of a top-k (any leading shape; entries in any order)."""
    k = target.ids.shape[-1]
    lead = tuple(target.ids.shape[:-1])
    order = target.logprobs.reshape(-1, k).double().argsort(dim=-1, descending=True)
    logprobs = target.logprobs.reshape(-1, k).double().gather(-1, order).cpu()
    ids = target.ids.reshape(-1, k).gather(-1, order).cpu()
    tail = torch.from_numpy(target.tail.reshape(-1).cpu().numpy().astype(np.float16)).double()
    shape = basis(k, degree)
    design = torch.cat([torch.ones(k, 1, dtype=torch.float64), shape], dim=-1)
    coefficients = (logprobs @ torch.linalg.pinv(design).T)[:, 1:]
    curve = coefficients.numpy().astype(np.float16)
    arrays = {
        "ids_packed": pack(ids.numpy(), id_bits(vocab_size)),
        "curve": curve,
        "tail": tail.numpy().astype(np.float16),
    }
    if residual_bits:
        fitted = normalise(torch.from_numpy(curve).double() @ shape.T, tail)
        residual = logprobs - fitted
        scale = residual.abs().amax(dim=-1).numpy().astype(np.float16)
        step = torch.from_numpy(scale).double().clamp_min(1e-12)[:, None]
        levels = 2 ** (residual_bits - 1) - 1 or 1
        code = (residual / step * levels).round().clamp(-levels - 1, levels) + levels + 1
        arrays["residual"] = pack(code.numpy().astype(np.uint32), residual_bits)
        arrays["scale"] = scale
    return {name: array.reshape(*lead, *array.shape[1:]) for name, array in arrays.items()}


def decode_topk(
    arrays: dict[str, np.ndarray], k: int, vocab_size: int, degree: int = 2, residual_bits: int = 3
) -> tuple[Tensor, Tensor, Tensor]:
    """(ids int64, log-probabilities float32, tail float32) rebuilt from ``encode_topk``'s
    arrays (any leading shape)."""
    tail_array = np.asarray(arrays["tail"])
    lead = tail_array.shape
    rows = int(np.prod(lead)) if lead else 1
    ids = unpack(np.asarray(arrays["ids_packed"]).reshape(rows, -1), id_bits(vocab_size), k)
    tail = torch.from_numpy(tail_array.reshape(rows).astype(np.float64))
    curve = torch.from_numpy(np.asarray(arrays["curve"]).reshape(rows, degree).astype(np.float64))
    logprobs = normalise(curve @ basis(k, degree).T, tail)
    if residual_bits:
        levels = 2 ** (residual_bits - 1) - 1 or 1
        code = unpack(np.asarray(arrays["residual"]).reshape(rows, -1), residual_bits, k)
        scale = np.asarray(arrays["scale"]).reshape(rows, 1).astype(np.float64)
        logprobs = normalise(
            logprobs + torch.from_numpy((code - levels - 1) * scale / levels), tail
        )
    return (
        torch.from_numpy(ids).reshape(*lead, k),
        logprobs.float().reshape(*lead, k),
        tail.float().reshape(lead),
    )
