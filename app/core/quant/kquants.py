"""Dequantizers for the K-quants (256-element super-blocks), vectorised over all blocks.

Each one unpacks ggml's block layout (ggml-common.h) and then does the same float32 operations,
in the same order, as gguf-py's numpy dequantizer, so the results are bit-identical to it.
Every function takes uint8 blocks [n, type_size] and returns float32 [n, 256] on the same device.
"""

from __future__ import annotations

import torch

from app.core.quant.legacy import f16_field

QK_K = 256


def _shifts(values: list[int], device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _crumbs(packed: torch.Tensor, groups: int) -> torch.Tensor:
    """2-bit fields: byte l of group g holds elements (g, s, l) at bits 2s, s = 0..3."""
    n = packed.shape[0]
    shifts = _shifts([0, 2, 4, 6], packed.device, (1, 1, 4, 1))
    return (packed.reshape(n, groups, 1, 32) >> shifts) & 3


def _bits(packed: torch.Tensor) -> torch.Tensor:
    """1-bit fields of a 32-byte mask: element 32 * b + l is bit b of byte l."""
    n = packed.shape[0]
    shifts = _shifts(list(range(8)), packed.device, (1, 1, 8, 1))
    return (packed.reshape(n, 1, 1, 32) >> shifts) & 1


def _nibbles(packed: torch.Tensor, width: int) -> torch.Tensor:
    """4-bit fields: in each run of `width` bytes, low nibbles come first, then high ones."""
    n = packed.shape[0]
    shifts = _shifts([0, 4], packed.device, (1, 1, 2, 1))
    return (packed.reshape(n, -1, 1, width) >> shifts) & 0x0F


def scale_min_k4(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and eight 6-bit mins packed into 12 bytes (Q4_K, Q5_K)."""
    n = packed.shape[0]
    rows = packed.reshape(n, 3, 4)
    d, m, md = rows[:, 0], rows[:, 1], rows[:, 2]
    scales = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scales, mins


def dequantize_q2_k(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    scales, qs = raw[:, :16], raw[:, 16:80]
    d, dmin = f16_field(raw, 80), f16_field(raw, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _crumbs(qs, 2).reshape(n, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q3_k(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    hmask, qs, packed = raw[:, :32], raw[:, 32:96], raw[:, 96:108]
    d = f16_field(raw, 108)
    low = (packed[:, :8].reshape(n, 1, 8) >> _shifts([0, 4], raw.device, (1, 2, 1)))
    high = (packed[:, 8:].reshape(n, 1, 4) >> _shifts([0, 2, 4, 6], raw.device, (1, 4, 1)))
    scales = (low.reshape(n, 16) & 0x0F) | ((high.reshape(n, 16) & 0x03) << 4)
    scales = scales.to(torch.float32) - 32
    dl = (d * scales).reshape(n, 16, 1)
    ql = _crumbs(qs, 2).reshape(n, 16, 16).to(torch.int8)
    # A set bit in hmask means "no offset"; a clear one subtracts 4.
    qh = (_bits(hmask).reshape(n, 16, 16) ^ 1).to(torch.int8) << 2
    return (dl * (ql - qh).to(torch.float32)).reshape(n, QK_K)


def dequantize_q4_k(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    d, dmin = f16_field(raw, 0), f16_field(raw, 2)
    scales, mins = scale_min_k4(raw[:, 4:16])
    dl = (d * scales.to(torch.float32)).reshape(n, 8, 1)
    ml = (dmin * mins.to(torch.float32)).reshape(n, 8, 1)
    q = _nibbles(raw[:, 16:], 32).reshape(n, 8, 32).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q5_k(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    d, dmin = f16_field(raw, 0), f16_field(raw, 2)
    scales, mins = scale_min_k4(raw[:, 4:16])
    dl = (d * scales.to(torch.float32)).reshape(n, 8, 1)
    ml = (dmin * mins.to(torch.float32)).reshape(n, 8, 1)
    low = _nibbles(raw[:, 48:], 32).reshape(n, 8, 32)
    high = _bits(raw[:, 16:48]).reshape(n, 8, 32)
    q = (low | (high << 4)).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q6_k(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    ql, qh = raw[:, :128], raw[:, 128:192]
    scales = raw[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = f16_field(raw, 208)
    dl = (d * scales).reshape(n, 16, 1)
    low = _nibbles(ql, 64).reshape(n, 8, 32)
    high = _crumbs(qh, 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def dequantize_q8_k(raw: torch.Tensor) -> torch.Tensor:
    # block_q8_K: float d, int8 qs[256], int16 bsums[16] (the sums are only for dot products).
    d = raw[:, :4].contiguous().view(torch.float32)
    return raw[:, 4:260].contiguous().view(torch.int8).to(torch.float32) * d
