"""Which GGML types Modelyard can read, answered without importing torch: the window plans
GGUF conversions (and so asks this) and must not load torch."""

from __future__ import annotations

from functools import cache

import numpy as np
from gguf import quants as gguf_quants

from app.core.quant.types import QuantType, get_type

# The types codec.DEQUANTIZERS decodes in torch on the tensor's device; a test keeps the two
# equal. Others are read through gguf-py's numpy code where it has one.
TORCH_DEQUANTIZED = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
})


def can_dequantize(qtype: str | QuantType) -> bool:
    """Whether Modelyard can read this type: in torch, or through gguf-py's slow path."""
    spec = get_type(qtype)
    return spec.name in TORCH_DEQUANTIZED or gguf_py_dequantizes(spec)


def has_fast_dequantizer(qtype: str | QuantType) -> bool:
    """Whether this type dequantizes in torch on the tensor's device (not through numpy)."""
    return get_type(qtype).name in TORCH_DEQUANTIZED


@cache
def gguf_py_dequantizes(spec: QuantType) -> bool:
    try:
        gguf_quants.dequantize(np.zeros((1, spec.type_size), dtype=np.uint8), spec.ggml_type)
    except NotImplementedError:
        return False
    return True
