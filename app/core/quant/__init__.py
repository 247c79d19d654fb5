"""GGML tensor types in torch, and the file types (targets) a GGUF can be written as.

    quantize(weights, "Q8_0")        float tensor [..., n]  → uint8 [..., n / block * type_size]
    dequantize(raw, "Q8_0")          uint8 [..., row_bytes] → float32 [..., n]

Both keep the result on the device of their input (a CUDA tensor stays on CUDA). Where gguf-py
can quantize a type, the bytes are identical to gguf-py's (which are llama-quantize's); the
torch dequantizers are bit-identical to gguf-py's.

    plan_tensor_types("Q4_K_M", tensors, hparams)   the type of each tensor, as llama-quantize
                                                    chooses it, with sizes and bits per weight
"""

from app.core.quant.codec import can_dequantize, can_quantize, dequantize, quantize
from app.core.quant.mixes import ModelPlan, TensorPlan, plan_tensor_types
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
    BlockSizeError,
    QuantType,
    TypeChoice,
    fitting_type,
    get_type,
)

__all__ = [
    "TARGETS", "TYPES", "BlockSizeError", "ModelHparams", "ModelPlan", "QuantType", "Target",
    "TensorPlan", "TensorSpec", "TypeChoice", "can_dequantize", "can_quantize", "dequantize",
    "fitting_type", "get_target", "get_type", "gguf_hparams", "gguf_tensor_specs",
    "llama_tensor_specs", "plan_tensor_types", "quantize", "writable_targets",
]
