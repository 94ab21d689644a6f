"""LoRA students (Hu et al., ICLR 2022, "LoRA: Low-Rank Adaptation of Large Language
Models") through the ``peft`` package: the student keeps its weights W frozen and learns
W + (alpha / r) · B A, with A (r × in) and B (out × r, zero at the start) on the modules
``target_modules`` names.

The adapters are injected in place (``peft.inject_adapter_in_model``), so module paths
stay what they were and taps, checkpoints and hooks see the student they expect. Only the
adapter weights train; ``distill.training.checkpoint`` saves and loads only them for a
student that has adapters. ``save_adapter`` writes them in PEFT's own format (loadable with
``PeftModel.from_pretrained(base, folder)``); ``merge_adapters`` folds them into W for
deployment.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from distill.errors import DistillError

ADAPTER_KEY = "lora_"  # in the name of every adapter tensor
ADAPTER_DIR = "adapter"  # in a run's folder: the adapters in PEFT's format
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PEFT's files name a wrapped model's tensors


def is_adapter_key(name: str) -> bool:
    return ADAPTER_KEY in name


def has_adapters(module: nn.Module) -> bool:
    return any(is_adapter_key(name) for name, _ in module.named_parameters())


def add_adapters(
    model: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str]
) -> nn.Module:
    """Inject LoRA adapters of rank ``r`` into every module whose name is, or ends with,
    one of ``target_modules``; freeze everything else. A target that matches no module is
    a ``DistillError`` listing the closest module names."""
    import peft

    names = [name for name, _ in model.named_modules() if name]
    for target in target_modules:
        if not any(name == target or name.endswith("." + target) for name in names):
            candidates = sorted({name.rsplit(".", 1)[-1] for name in names} | set(names))
            close = difflib.get_close_matches(target, candidates, n=5, cutoff=0.5)
            shown = close or [n for n in candidates if "." not in n][:8]
            raise DistillError(
                f"student.peft.target_modules: no module named {target!r} in "
                f"{type(model).__name__}; {'closest' if close else 'some'} names: "
                f"{', '.join(shown)}"
            )
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
    )
    try:
        peft.inject_adapter_in_model(config, model)
    except ValueError as error:  # e.g. a module type LoRA does not support
        raise DistillError(f"student.peft: {error}") from None
    return model


def with_lora(model: nn.Module, spec: object) -> nn.Module:
    """``model`` with the adapters a student spec's ``peft`` asks for, else as it is."""
    lora = getattr(spec, "peft", None)
    if lora is None:
        return model
    return add_adapters(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)


def adapter_state(model: nn.Module) -> dict:
    """The adapter tensors under the model's own names."""
    return {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if is_adapter_key(name)
    }


def save_adapter(model: nn.Module, folder: Path, base_model: str) -> Path:
    """The adapters in PEFT's format: ``adapter_config.json`` and
    ``adapter_model.safetensors``, for ``PeftModel.from_pretrained(base, folder)``."""
    import peft

    config = next(m.peft_config["default"] for m in model.modules() if hasattr(m, "peft_config"))
    folder.mkdir(parents=True, exist_ok=True)
    record = config.to_dict()
    record["base_model_name_or_path"] = base_model
    record["target_modules"] = sorted(record["target_modules"])
    (folder / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2, default=str))
    tensors = peft.get_peft_model_state_dict(model)
    save_file(
        {PEFT_PREFIX + name: t.detach().contiguous() for name, t in tensors.items()},
        str(folder / ADAPTER_WEIGHTS),
    )
    return folder


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its frozen weight (W + (alpha / r) · B A) and put the plain
    layer back, in place: the model then has the architecture it was built with."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
