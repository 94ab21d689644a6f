"""A teacher read back from a teacher-output cache (``distill cache``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from distill.batch import Batch
from distill.cache import CacheReader, example_ids, input_hashes
from distill.cache.compact import decode_topk
from distill.errors import CacheError
from distill.outputs import TeacherOutput, TopK
from distill.paths import sha256_file
from distill.teachers.base import Teacher

HIDDEN_TAP = "lm_head:input"  # what a hidden-state cache answers: the head's input


class Cached(Teacher):
    """The answers a teacher gave once, looked up by each batch's ``example_id``.

    A dense cache gives ``TeacherOutput.logits`` (exactly the teacher's); a top-k cache
    gives ``TeacherOutput.topk`` (ids, log-probabilities and tail mass at the cache's
    temperature; a compact one rebuilt on the fly), read by sparse losses
    (``losses.sparse``, ``lm_head_sparse_kd``). A hidden-state cache gives the teacher's
    final hidden states as the feature ``lm_head:input`` of ``head_model()``, the teacher's
    LM head as stored, so ``token_kd_term(student, cached.head_model())`` computes the
    exact full-vocabulary KD without the teacher's body.

    ``expect`` lists what the cache must have been built with (e.g. tokenizer, vocabulary
    size, sequence length); any difference from the cache's fingerprint is an error naming
    it. With ``check_inputs`` every batch's inputs are compared with the digests stored at
    build time, so a cache read with other data, another tokenizer or augmentations fails
    loudly instead of teaching wrong answers. ``verify`` checks each shard's SHA-256 when it
    is first read.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        expect: Mapping[str, Any] | None = None,
        check_inputs: bool = True,
        verify: bool = True,
    ) -> None:
        self.reader = CacheReader(folder, verify=verify)
        self.layout = self.reader.layout
        self.check_inputs = check_inputs
        self.device = torch.device("cpu")
        self._head: nn.Module | None = None
        fingerprint = self.layout.fingerprint
        differ = [k for k, v in (expect or {}).items() if fingerprint.get(k) != v]
        if differ:
            details = "; ".join(
                f"{k}: cache built with {fingerprint.get(k)!r}, now {expect[k]!r}"  # type: ignore[index]
                for k in differ
            )
            raise CacheError(
                f"the teacher cache {folder} does not match this run ({details}); rebuild "
                "it with `distill cache` or point to the right folder"
            )

    @property
    def temperature(self) -> float:
        return self.layout.temperature

    @property
    def fixed_temperature(self) -> float | None:  # type: ignore[override]
        """A top-k cache holds the teacher at one temperature; dense logits take any."""
        return self.layout.temperature if self.layout.kind == "topk" else None

    def head_model(self) -> nn.Module:
        """The teacher's LM head as a model with one submodule, ``lm_head`` (its input is
        the tap the hidden states answer), loaded from the cache once (checksum verified)
        and moved with the teacher (``to``)."""
        if self.layout.kind != "hidden":
            raise CacheError(f"{self.reader.folder} is a {self.layout.kind} cache: no LM head")
        if self._head is not None:
            return self._head
        meta = self.reader.manifest["head"]
        path = self.reader.folder / meta["file"]
        if sha256_file(path) != meta["sha256"]:
            raise CacheError(f"{path}: checksum mismatch, the LM head changed or is corrupt")
        tensors = load_file(path)
        vocab, hidden = tensors["weight"].shape
        model = nn.Module()
        model.lm_head = nn.Linear(hidden, vocab, bias="bias" in tensors)
        model.lm_head.load_state_dict(tensors)
        self._head = model.requires_grad_(False).to(self.device)
        return self._head

    def add_taps(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if self.layout.kind == "hidden" and set(paths) <= {HIDDEN_TAP}:
            return
        if paths:
            raise CacheError(
                f"a cached teacher keeps only its outputs, not the features at {paths}; use a "
                "live teacher (teachers.Module) for feature losses"
            )

    def to(self, device: torch.device | str) -> Cached:
        """Where answers are handed out (and the LM head of a hidden-state cache lives)."""
        self.device = torch.device(device)
        if self._head is not None:
            self._head.to(self.device)
        return self

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        ids = example_ids(batch)
        rows = self.reader.rows(ids)
        if self.check_inputs:
            differ = np.nonzero(rows["input_hash"] != input_hashes(batch))[0]
            if differ.size:
                raise CacheError(
                    f"examples {ids[differ[:5]].tolist()}: their inputs differ from those the "
                    "cache was built on (other data, tokenizer, sequence length, split or "
                    "augmentation); rebuild the cache, or pass check_inputs=False if that is "
                    "intended"
                )

        def tensor(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(rows[name])).to(self.device, dtype)

        layout = self.layout
        if layout.kind == "dense":
            return TeacherOutput(logits=tensor("logits", torch.float32))
        if layout.kind == "hidden":
            return TeacherOutput(
                logits=None, features={HIDDEN_TAP: tensor("hidden", torch.float32)}
            )
        if layout.encoding == "compact":
            assert layout.k is not None and layout.vocab_size is not None
            ids, logprobs, tail = decode_topk(
                rows, layout.k, layout.vocab_size, layout.curve_degree, layout.residual_bits
            )
            topk = TopK(ids, logprobs, tail, layout.temperature).to(self.device)
            return TeacherOutput(logits=None, topk=topk)
        return TeacherOutput(
            logits=None,
            topk=TopK(
                ids=tensor("ids", torch.long),
                logprobs=tensor("logprobs", torch.float32),
                tail=tensor("tail", torch.float32),
                temperature=layout.temperature,
            ),
        )
