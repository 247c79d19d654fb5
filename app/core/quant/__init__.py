"""GGML tensor types in torch, and the file types (targets) a GGUF can be written as.

    quantize(weights, "Q8_0")        float tensor [..., n]  → uint8 [..., n / block * type_size]
    dequantize(raw, "Q8_0")          uint8 [..., row_bytes] → float32 [..., n]

Both keep the result on the device of their input (a CUDA tensor stays on CUDA). Where gguf-py
can quantize a type, the bytes are identical to gguf-py's (which are llama-quantize's); the
K-quants' (Q2_K..Q6_K, kquant_writers and kquants) are llama-quantize's too. The torch
dequantizers are bit-identical to gguf-py's.

    plan_tensor_types("Q4_K_M", tensors, hparams)   the type of each tensor, as llama-quantize
                                                    chooses it, with sizes and bits per weight;
                                                    `overrides` (quant.overrides) for its
                                                    per-tensor type options

The table of types and targets and the planner do not import torch (the GUI shows estimates
without loading it); quantize/dequantize load it on first use.
"""

from typing import TYPE_CHECKING, Any

from app.core.quant.mixes import ModelPlan, TensorPlan, plan_tensor_types
from app.core.quant.readable import can_dequantize
from app.core.quant.specs import (
    ModelHparams,
    TensorSpec,
    gguf_hparams,
    gguf_tensor_specs,
    llama_tensor_specs,
)
from app.core.quant.targets import TARGETS, Target, get_target, writable_targets
from app.core.quant.types import (
    TYPES,
    WRITABLE_TYPES,
    BlockSizeError,
    QuantType,
    TypeChoice,
    can_quantize,
    fitting_type,
    get_type,
)

if TYPE_CHECKING:
    from app.core.quant.codec import dequantize, quantize

_FROM_CODEC = {"dequantize", "quantize"}


def __getattr__(name: str) -> Any:
    if name in _FROM_CODEC:
        from app.core.quant import codec

        return getattr(codec, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TARGETS", "TYPES", "WRITABLE_TYPES", "BlockSizeError", "ModelHparams", "ModelPlan",
    "QuantType", "Target", "TensorPlan", "TensorSpec", "TypeChoice", "can_dequantize",
    "can_quantize", "dequantize", "fitting_type", "get_target", "get_type", "gguf_hparams",
    "gguf_tensor_specs", "llama_tensor_specs", "plan_tensor_types", "quantize",
    "writable_targets",
]
