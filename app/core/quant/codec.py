"""Dispatch quantize/dequantize to the implementation of each type."""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.core.errors import UnsupportedError
from app.core.quant import floats, legacy
from app.core.quant.types import QuantType, get_type

Quantizer = Callable[[torch.Tensor], torch.Tensor]  # float [n_blocks, block] → uint8 blocks
Dequantizer = Callable[[torch.Tensor], torch.Tensor]  # uint8 [n_blocks, type_size] → float32

QUANTIZERS: dict[str, Quantizer] = {
    "F32": floats.quantize_f32,
    "F16": floats.quantize_f16,
    "BF16": floats.quantize_bf16,
    "Q8_0": legacy.quantize_q8_0,
}
DEQUANTIZERS: dict[str, Dequantizer] = {
    "F32": floats.dequantize_f32,
    "F16": floats.dequantize_f16,
    "BF16": floats.dequantize_bf16,
    "Q8_0": legacy.dequantize_q8_0,
}


def can_quantize(qtype: str | QuantType) -> bool:
    return get_type(qtype).name in QUANTIZERS


def quantize(weights: torch.Tensor, qtype: str | QuantType) -> torch.Tensor:
    """Quantize the last dimension of `weights` into GGML blocks; uint8 result, same device."""
    spec = get_type(qtype)
    quantizer = QUANTIZERS.get(spec.name)
    if quantizer is None:
        raise UnsupportedError(f"Modelyard cannot write {spec.name} tensors yet")
    n_per_row = weights.shape[-1]
    row_bytes = spec.row_bytes(n_per_row)
    blocks = weights.reshape(-1, spec.block_size)
    if blocks.dtype != torch.float32:
        blocks = blocks.to(torch.float32)
    out = quantizer(blocks)
    return out.reshape(*weights.shape[:-1], row_bytes)


def dequantize(raw: torch.Tensor, qtype: str | QuantType) -> torch.Tensor:
    """Dequantize GGML blocks (uint8, last dimension = bytes per row) to float32, same device."""
    spec = get_type(qtype)
    dequantizer = DEQUANTIZERS.get(spec.name)
    if dequantizer is None:
        raise UnsupportedError(f"Modelyard cannot read {spec.name} tensors yet")
    if raw.dtype != torch.uint8:
        raise TypeError(f"expected uint8 bytes, got {raw.dtype}")
    row_bytes = raw.shape[-1]
    if row_bytes % spec.type_size:
        raise ValueError(f"{row_bytes} bytes per row is not a whole number of {spec.name} "
                         "blocks")
    n_per_row = row_bytes // spec.type_size * spec.block_size
    values = dequantizer(raw.reshape(-1, spec.type_size))
    return values.reshape(*raw.shape[:-1], n_per_row)
