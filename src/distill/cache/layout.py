"""What a teacher cache holds (``Layout``) and how its rows are keyed: example ids and a
digest of each example's inputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from torch import Tensor

from distill.batch import Batch
from distill.errors import CacheError

FORMAT = "distill-teacher-cache/1"
LAYOUT_FILE = "layout.json"
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "head.safetensors"  # a hidden-state cache's LM head, kept once
LOGPROB_DTYPES = {"float16": np.float16, "float32": np.float32}
Kind = Literal["dense", "topk", "hidden"]
ENCODINGS = ("plain", "compact")
# fields a plain cache leaves out of its JSON, so caches written before them read the same
COMPACT_FIELDS = ("encoding", "curve_degree", "residual_bits")


def narrowest_id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds token ids below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass(frozen=True)
class Layout:
    """What a cache holds; two writers of one folder must agree on all of it.

    ``kind``: ``dense`` logits, the ``topk`` of each position (``k``, ``vocab_size``), or
    the teacher's final ``hidden`` states (``hidden_size``, float16) with its LM head kept
    once. A top-k cache is ``encoding`` ``plain`` (ids in the narrowest integer type,
    ``logprob_dtype`` log-probs) or ``compact`` (``cache.compact``: ids bit-packed, the
    log-probs as a ``curve_degree`` curve over the rank plus ``residual_bits`` per entry).
    """

    kind: Kind
    num_examples: int
    shard_size: int
    k: int | None = None
    temperature: float = 1.0
    vocab_size: int | None = None
    logprob_dtype: str = "float16"
    fingerprint: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    encoding: str = "plain"
    curve_degree: int = 2
    residual_bits: int = 3
    hidden_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("dense", "topk", "hidden"):
            raise ValueError(f"kind must be 'dense', 'topk' or 'hidden', got {self.kind!r}")
        if self.encoding not in ENCODINGS or (self.encoding == "compact" and self.kind != "topk"):
            raise ValueError("encoding must be 'plain', or 'compact' for a top-k cache")
        if not 1 <= self.curve_degree <= 6 or self.residual_bits not in (0, 2, 3, 4, 5, 6, 7, 8):
            raise ValueError("curve_degree must be in 1..6 and residual_bits 0 or 2..8")
        if (self.kind == "hidden") != (self.hidden_size is not None):
            raise ValueError("give hidden_size exactly for a hidden-state cache")
        if self.num_examples < 1 or self.shard_size < 1:
            raise ValueError("a cache needs at least one example and shard_size >= 1")
        if self.kind == "topk" and (not self.k or not self.vocab_size or self.k < 1):
            raise ValueError("a top-k cache needs k >= 1 and vocab_size")
        if self.k is not None and self.vocab_size is not None and self.k > self.vocab_size:
            raise ValueError(f"k={self.k} exceeds the vocabulary of {self.vocab_size}")
        if self.logprob_dtype not in LOGPROB_DTYPES:
            raise ValueError(f"logprob_dtype must be one of {', '.join(LOGPROB_DTYPES)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def num_shards(self) -> int:
        return -(-self.num_examples // self.shard_size)

    def shard_rows(self, index: int) -> range:
        return range(index * self.shard_size, min(self.num_examples, (index + 1) * self.shard_size))

    def to_json(self) -> dict[str, Any]:
        data = json.loads(json.dumps(asdict(self)))
        if self.encoding == "plain":
            for name in COMPACT_FIELDS:
                data.pop(name)
        if self.hidden_size is None:
            data.pop("hidden_size")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Layout:
        return cls(**data)


def input_hashes(batch: Batch) -> np.ndarray:
    """One 64-bit digest per example of every tensor the model receives (args and kwargs,
    in a fixed order): the cache's check that it is read with the inputs it was built on."""
    tensors = [a for a in batch.args if isinstance(a, Tensor)]
    tensors += [
        batch.kwargs[k] for k in sorted(batch.kwargs) if isinstance(batch.kwargs[k], Tensor)
    ]
    if not tensors:
        raise CacheError("the batch holds no input tensor to fingerprint")
    arrays = [t.detach().cpu().contiguous().numpy() for t in tensors]
    out = np.empty(arrays[0].shape[0], dtype=np.int64)
    for row in range(out.shape[0]):
        digest = hashlib.blake2b(digest_size=8)
        for array in arrays:
            digest.update(array[row].tobytes())
        out[row] = np.frombuffer(digest.digest(), dtype=np.int64)[0]
    return out


KEY_FIELDS = ("example_id", "input_hash")


def example_ids(batch: Batch) -> np.ndarray:
    ids = batch.meta.get("example_id")
    if ids is None:
        raise CacheError(
            "the batches carry no example_id; yield it from the dataset (a dict key "
            "'example_id', or the metadata dict of (inputs, labels, meta)), e.g. with "
            "distill.data.WithExampleId(dataset)"
        )
    return ids.detach().cpu().numpy().astype(np.int64)
