"""Compression transforms: pruning, low-rank factorization, quantization-aware training,
ONNX export with a parity check. Pure functions on models; the recipe stages that chain
them with distillation live in ``distill.runs.stages.compress``, the pruning callbacks in
``distill.methods.pruning``."""

from distill.compress.export import (
    Parity,
    ParityError,
    check_parity,
    export_onnx,
    onnx_latency_ms,
    quantize_onnx_int8,
)
from distill.compress.lowrank import Factorized, factorize, factorize_layer, rank_for_energy
from distill.compress.prune import (
    cubic_sparsity,
    magnitude_prune,
    make_permanent,
    nonzero_parameters,
    prune_channels,
    sparsity,
)
from distill.compress.quantize import (
    convert_qat,
    load_quantized,
    prepare_qat,
    quantize_weights,
    save_quantized,
)

__all__ = [
    "Factorized",
    "Parity",
    "ParityError",
    "check_parity",
    "convert_qat",
    "cubic_sparsity",
    "export_onnx",
    "factorize",
    "factorize_layer",
    "load_quantized",
    "magnitude_prune",
    "make_permanent",
    "nonzero_parameters",
    "onnx_latency_ms",
    "prepare_qat",
    "prune_channels",
    "quantize_onnx_int8",
    "quantize_weights",
    "rank_for_energy",
    "save_quantized",
    "sparsity",
]
