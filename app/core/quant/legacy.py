"""The legacy block quants (32 elements per block), vectorised over all blocks of a tensor.

Each follows ggml-quants.c's reference quantizer step for step in float32 so the bytes match
gguf-py's numpy port (and llama-quantize) exactly.
"""

from __future__ import annotations

import torch


def round_away(values: torch.Tensor) -> torch.Tensor:
    """roundf(): halves away from zero, computed as gguf-py does to match it bit for bit."""
    magnitude = values.abs()
    floored = magnitude.floor()
    return values.sign() * (floored + (2 * (magnitude - floored)).floor())


def _f16_bytes(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.float16).contiguous().view(torch.uint8).reshape(values.shape[0], 2)


def quantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)
    quants = round_away(blocks * inverse).to(torch.int8).view(torch.uint8)
    return torch.cat([_f16_bytes(scale), quants], dim=1)


def dequantize_q8_0(raw: torch.Tensor) -> torch.Tensor:
    scale = raw[:, :2].contiguous().view(torch.float16).to(torch.float32)
    quants = raw[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return quants * scale
