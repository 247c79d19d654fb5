"""F32, F16 and BF16 as GGML "types" with one element per block."""

from __future__ import annotations

import torch


def _as_bytes(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.uint8).reshape(values.shape[0], -1)


def quantize_f32(blocks: torch.Tensor) -> torch.Tensor:
    return _as_bytes(blocks.to(torch.float32))


def quantize_f16(blocks: torch.Tensor) -> torch.Tensor:
    return _as_bytes(blocks.to(torch.float16))


def quantize_bf16(blocks: torch.Tensor) -> torch.Tensor:
    # torch rounds to nearest even like ggml_compute_fp32_to_bf16 and gguf-py.
    return _as_bytes(blocks.to(torch.bfloat16))


def dequantize_f32(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(raw.contiguous().view(torch.float32))


def dequantize_f16(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(raw.contiguous().view(torch.float16))


def dequantize_bf16(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(raw.contiguous().view(torch.bfloat16))
