"""Students from teachers: keep a subset of a transformer's layers, with their weights
(``models.narrow`` makes them narrower).

DistilBERT keeps every other layer of BERT; Minitron-style depth pruning keeps the layers
that matter. ``student_from_teacher`` copies the teacher, keeps the chosen blocks of its
layer stack (embeddings, final norm and head come along) and updates the config, so the
student starts from the teacher's weights. ``contiguous_block_to_drop`` picks, from the
teacher's own hidden states on calibration text, the run of layers whose removal changes
the residual stream least (Gromov et al. 2024); in decoder LLMs that keeps far more of the
teacher than spreading the kept layers evenly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

# where common architectures keep their stack of blocks
LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, SmolLM
    "model.decoder.layers",  # OPT, BART decoders
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",
    "bert.encoder.layer",  # BERT heads (masked LM, classification)
    "encoder.layer",  # BertModel
    "distilbert.transformer.layer",
    "roberta.encoder.layer",
    "vision_model.encoder.layers",  # CLIP / SigLIP image towers (models.clip.load_hf_clip)
)
LAYER_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted path and ``ModuleList`` of the model's transformer blocks."""
    for path in LAYER_PATHS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return path, found
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of layers to choose from")
    return max(lists, key=lambda item: len(item[1]))


def uniform_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``total``, always keeping the last one."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    return sorted({round((i + 1) * total / keep) - 1 for i in range(keep)})


def contiguous_block_to_drop(
    hidden_states: Sequence[Tensor], drop: int, mask: Tensor | None = None
) -> list[int]:
    """The layers to keep after dropping the ``drop`` consecutive layers that matter least.

    For each start ``l`` it measures the angular distance between the residual stream
    entering layer ``l`` and entering layer ``l + drop``,
    ``d(l) = mean over tokens of arccos(cos(h_l, h_{l+drop})) / π``, and drops layers
    ``l … l+drop-1`` for the smallest ``d`` (Gromov et al., "The Unreasonable
    Ineffectiveness of the Deeper Layers", 2024). ``hidden_states`` is the
    ``output_hidden_states`` tuple of a Hugging Face model: the embeddings, then the output
    of each of the L layers (the last may be normalised, so the last layer is always
    kept). ``mask`` (batch, seq) selects the tokens that count.
    """
    total = len(hidden_states) - 1
    if not 1 <= drop <= total - 1:
        raise ValueError(f"can drop 1 to {total - 1} of {total} layers, not {drop}")
    distances = []
    for start in range(total - drop):  # start + drop <= total - 1: the last layer stays
        cosine = torch.nn.functional.cosine_similarity(
            hidden_states[start].float(), hidden_states[start + drop].float(), dim=-1
        )
        angle = torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi
        distances.append(float(angle.mean() if mask is None else angle[mask.bool()].mean()))
    best = min(range(len(distances)), key=distances.__getitem__)
    return [i for i in range(total) if not best <= i < best + drop]


@torch.no_grad()
def layers_by_similarity(model: nn.Module, calibration: dict[str, Tensor], keep: int) -> list[int]:
    """``keep`` layer indices of a Hugging Face model, chosen by ``contiguous_block_to_drop``
    from one forward pass on ``calibration`` (model keyword arguments, e.g. input_ids)."""
    was_training = model.training
    model.eval()
    not_inputs = ("labels", "loss_mask", "example_id")
    inputs = {k: v for k, v in calibration.items() if k not in not_inputs}
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    model.train(was_training)
    return contiguous_block_to_drop(hidden, len(hidden) - 1 - keep, inputs.get("attention_mask"))


def student_from_teacher(
    teacher: nn.Module,
    keep: Sequence[int] | int | str = "every_other",
    *,
    calibration: dict[str, Tensor] | None = None,
) -> nn.Module:
    """A copy of ``teacher`` with only the layers ``keep`` selects, weights included.

    ``keep`` is a list of layer indices, a number of layers, or ``"every_other"`` (layers
    0, 2, 4, …, as DistilBERT). A number of layers is spread uniformly, or, given
    ``calibration`` inputs, is the teacher minus its least useful contiguous block
    (``layers_by_similarity``).
    """
    if isinstance(keep, int) and not isinstance(keep, bool) and calibration is not None:
        keep = layers_by_similarity(teacher, calibration, keep)
    # a trainable copy, even if the teacher was frozen by teachers.Module
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    path, layers = layer_stack(student)
    total = len(layers)
    if keep == "every_other":
        indices = list(range(0, total, 2))
    elif isinstance(keep, int):
        indices = uniform_layers(total, keep)
    elif isinstance(keep, str):
        raise ValueError(f"keep must be indices, a count or 'every_other', got {keep!r}")
    else:
        indices = list(keep)
    bad = [i for i in indices if not 0 <= i < total]
    if bad or not indices or len(set(indices)) != len(indices):
        raise ValueError(f"layer indices {indices} must be distinct and within 0..{total - 1}")
    parent_path, _, attr = path.rpartition(".")
    parent = student.get_submodule(parent_path) if parent_path else student
    kept = nn.ModuleList([layers[i] for i in indices])
    setattr(parent, attr, kept)
    for new_index, layer in enumerate(kept):
        for module in layer.modules():  # KV-cache slots are addressed by layer index
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = getattr(student, "config", None)
    if config is not None:
        for field in LAYER_COUNT_FIELDS:
            if hasattr(config, field):
                setattr(config, field, len(indices))
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == total:
            config.layer_types = [layer_types[i] for i in indices]
    return student
