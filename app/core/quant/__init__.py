"""GGML tensor types in torch: quantize and dequantize on the tensor's own device.

    quantize(weights, "Q8_0")        float tensor [..., n]  → uint8 [..., n / block * type_size]
    dequantize(raw, "Q8_0")          uint8 [..., row_bytes] → float32 [..., n]

Both keep the result on the device of their input (a CUDA tensor stays on CUDA). Where gguf-py
can quantize a type, the bytes are identical to gguf-py's (which are llama-quantize's).
"""

from app.core.quant.codec import can_quantize, dequantize, quantize
from app.core.quant.types import TYPES, QuantType, get_type

__all__ = ["TYPES", "QuantType", "can_quantize", "dequantize", "get_type", "quantize"]
