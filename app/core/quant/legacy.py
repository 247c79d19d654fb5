"""The legacy block quants (32 elements per block), vectorised over all blocks of a tensor.

Each quantizer follows ggml-quants.c's reference quantizer (as ported by gguf-py) step for step
in float32, so the bytes match gguf-py's numpy port and llama-quantize exactly. Each dequantizer
does the same float32 operations in the same order as gguf-py, so its output is bit-identical;
it writes into `out` (float32 [n, 32]) so that a chunked tensor needs no extra copy.
Every function takes and returns tensors on the caller's device.
"""

from __future__ import annotations

import math

import torch

BLOCK = 32
_SIGN_BIT = -(1 << 31)  # 0x80000000 as an int32
_JUST_BELOW_HALF = 0x3EFFFFFF  # the bits of nextafterf(0.5f, 0) = 0.49999997f
_ALMOST_HALF = torch.tensor(_JUST_BELOW_HALF, dtype=torch.int32).view(torch.float32)


def _away_from_zero(values: torch.Tensor) -> torch.Tensor:
    """values + copysign(0.49999997f, values): truncating it rounds halves away from zero.

    trunc() of it equals gguf-py's np_roundf for every float32 of magnitude below 200 (checked
    exhaustively), the range these quantizers use, in fewer passes.
    """
    offset = (values.view(torch.int32) & _SIGN_BIT).bitwise_or_(_JUST_BELOW_HALF)
    return offset.view(torch.float32).add_(values)


def f16_bytes(values: torch.Tensor) -> torch.Tensor:
    """float32 [n, 1] → the little-endian bytes of its float16 rounding, [n, 2]."""
    return values.to(torch.float16).contiguous().view(torch.uint8).reshape(values.shape[0], 2)


def f16_field(raw: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 stored at bytes [start, start + 2) of each block, as float32 [n, 1]."""
    return raw[:, start:start + 2].contiguous().view(torch.float16).to(torch.float32)


def _inverse(scale: torch.Tensor) -> torch.Tensor:
    # `d ? 1.0f/d : 0.0f`; torch.where still evaluates 1/0, which is harmless (inf, discarded).
    return torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)


def _absmax(blocks: torch.Tensor) -> torch.Tensor:
    """max |x| per block, from two cheap reductions instead of abs() + a third."""
    return torch.maximum(blocks.amax(dim=1, keepdim=True),
                         -blocks.amin(dim=1, keepdim=True)).abs()  # abs: never -0.0


def first_absmax(blocks: torch.Tensor) -> torch.Tensor:
    """The signed value of largest magnitude in each block; the first one on ties, like ggml;
    +0.0 for a block of zeros (or of zeros and NaN)."""
    top = blocks.amax(dim=1, keepdim=True)
    bottom = blocks.amin(dim=1, keepdim=True)
    peak = torch.where(top > -bottom, top, bottom)
    # Where +m and -m are both present (or the block is all zeros), position decides: the
    # rare blocks take the slow argmax path. So do blocks holding NaN (amax propagates it),
    # which the C's `fabsf(x) > amax` never picks: a Q3_K sub-block scale overflows to NaN.
    tied = ((top == -bottom) | top.isnan()).squeeze(1)
    # On the meta device there are shapes and no values: nothing to break ties over.
    if not tied.is_meta and bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        subset = blocks[rows]
        magnitude = subset.abs().nan_to_num_(nan=0.0)
        largest = magnitude.amax(dim=1, keepdim=True)
        picked = subset.gather(1, magnitude.argmax(dim=1, keepdim=True))
        peak[rows] = torch.where(largest > 0, picked, 0.0)
    # The C's `max` starts at +0.0 and only a larger magnitude replaces it: a block of zeros
    # (-0.0 among them) gives +0.0, whose sign reaches d = max / -8 and the stored float16.
    return peak.add_(0.0)


def first_min(x: torch.Tensor) -> torch.Tensor:
    """`min = x[0]; if (x[i] < min) min = x[i];` over dim 1 ([N, n] → [N]), including the
    sign of a zero minimum (the first zero met), which reaches the output through a block's
    stored minimum and its scale (max - min)."""
    return _first_zero_sign(x, x.amin(dim=1))


def first_max(x: torch.Tensor) -> torch.Tensor:
    """`max = x[0]; if (x[i] > max) max = x[i];`: first_min's counterpart."""
    return _first_zero_sign(x, x.amax(dim=1))


def _first_zero_sign(x: torch.Tensor, extreme: torch.Tensor) -> torch.Tensor:
    """extreme [N], with each zero replaced by the first zero of its row (+0.0 or -0.0)."""
    is_zero = extreme == 0
    if not is_zero.is_meta and bool(is_zero.any()):
        first_zero = (x == 0).to(torch.int8).argmax(dim=1, keepdim=True)
        extreme = torch.where(is_zero, x.gather(1, first_zero).squeeze(1), extreme)
    return extreme


def _to_codes(values: torch.Tensor, top: int) -> torch.Tensor:
    """trunc(values) as uint8, clipped to [0, top]: numpy's `.astype(np.uint8).clip(0, top)`."""
    # The values are >= 0 for every finite input, so truncating through int32 is exact. A
    # block whose scale is denormal has inverse inf and values inf or NaN: the C's cast
    # (x86 cvttss2si) makes INT_MIN of those, code 0, and so does torch on the CPU; CUDA's
    # conversion saturates inf to INT_MAX instead, so elsewhere they become -1 first.
    if values.device.type != "cpu":
        values = values.nan_to_num(nan=-1.0, posinf=-1.0, neginf=-1.0)
    return values.to(torch.int32).clamp_(0, top).to(torch.uint8)


_NIBBLES = 0x0F0F0F0F0F0F0F0F  # the low nibble of each byte of an int64


def _as_words(data: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 8k] → int64 [n, k] over the same bytes (little-endian, like every device torch
    runs on); copied first when the bytes are not contiguous and 8-byte aligned."""
    if not data.is_contiguous() or data.storage_offset() % 8:
        data = data.clone(memory_format=torch.contiguous_format)
    return data.view(torch.int64)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """32 codes per block → 16 bytes: element j in the low nibble, element j + 16 in the high."""
    words = _as_words(codes)  # [n, 4]: words 0-1 the low half, 2-3 the high half
    packed = (words[:, :2] & _NIBBLES) | ((words[:, 2:] & _NIBBLES) << 4)
    return packed.view(torch.uint8)


def _high_bits(codes: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of the 32 codes as a little-endian uint32 (4 bytes): bit j = element j."""
    # Read each run of 8 one-bit bytes as a little-endian int64 and fold byte k's bit into bit
    # k of the lowest byte: three shift-ors on an eighth of the elements.
    folded = _as_words((codes >> 4) & 1)  # [n, 4]
    folded = folded | (folded >> 7)
    folded = folded | (folded >> 14)
    folded = folded | (folded >> 28)
    return (folded & 0xFF).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """16 bytes per block → 32 codes: the low nibbles, then the high ones."""
    words = _as_words(packed)  # [n, 2]
    return torch.cat([words & _NIBBLES, (words >> 4) & _NIBBLES], dim=1).view(torch.uint8)


# For each byte value, eight bytes holding 16 where the value has bit j set (byte j), else 0.
_SPREAD_BITS = [sum(16 << (8 * j) for j in range(8) if value >> j & 1) for value in range(256)]
_SPREAD_TABLES: dict[torch.device, torch.Tensor] = {}


def _unpack_high_bits(raw4: torch.Tensor) -> torch.Tensor:
    """4 bytes per block → 32 values of 0/16, element j from bit j (little-endian)."""
    table = _SPREAD_TABLES.get(raw4.device)
    if table is None:
        table = torch.tensor(_SPREAD_BITS, dtype=torch.int64, device=raw4.device)
        _SPREAD_TABLES[raw4.device] = table
    return table[raw4.long()].view(torch.uint8).reshape(raw4.shape[0], BLOCK)


# ---------------------------------------------------------------- quantizers


def quantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = _absmax(blocks) / 127
    # gguf-py's `d ? 1/d : 0`; where 1/d overflows (subnormal d) numpy's products become
    # inf or NaN and cast to 0, which an inverse of 0 gives too, without a pass over the values.
    inverse = 1 / scale
    inverse.masked_fill_(inverse == math.inf, 0)
    values = blocks * inverse
    # Round half away from zero (see _away_from_zero) in two passes: copysign, add in place.
    values.add_(torch.copysign(_ALMOST_HALF.to(values.device), values))
    out = torch.empty((blocks.shape[0], 2 + BLOCK), dtype=torch.uint8, device=blocks.device)
    out[:, :2] = f16_bytes(scale)
    # |values| < 128: the cast truncates, straight into the output bytes.
    out[:, 2:].view(torch.int8).copy_(values)
    return out


def quantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = first_absmax(blocks) / -8
    codes = _to_codes((blocks * _inverse(scale)).add_(8.5), 15)
    return torch.cat([f16_bytes(scale), _pack_nibbles(codes)], dim=1)


def quantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    low = first_min(blocks).unsqueeze(1)
    scale = (first_max(blocks).unsqueeze(1) - low) / 15
    codes = _to_codes((blocks - low).mul_(_inverse(scale)).add_(0.5), 15)
    return torch.cat([f16_bytes(scale), f16_bytes(low), _pack_nibbles(codes)], dim=1)


def quantize_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    scale = first_absmax(blocks) / -16
    codes = _to_codes((blocks * _inverse(scale)).add_(16.5), 31)
    return torch.cat([f16_bytes(scale), _high_bits(codes), _pack_nibbles(codes)], dim=1)


def quantize_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    low = first_min(blocks).unsqueeze(1)
    scale = (first_max(blocks).unsqueeze(1) - low) / 31
    codes = _to_codes((blocks - low).mul_(_inverse(scale)).add_(0.5), 31)
    return torch.cat([f16_bytes(scale), f16_bytes(low), _high_bits(codes),
                      _pack_nibbles(codes)], dim=1)


# ---------------------------------------------------------------- dequantizers


def dequantize_q8_0(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    quants = raw[:, 2:].view(torch.int8).to(torch.float32)
    return torch.mul(quants, f16_field(raw, 0), out=out)


def dequantize_q4_0(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    codes = _unpack_nibbles(raw[:, 2:]).to(torch.float32).sub_(8)
    return torch.mul(f16_field(raw, 0), codes, out=out)


def dequantize_q4_1(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    codes = _unpack_nibbles(raw[:, 4:]).to(torch.float32)
    return torch.mul(f16_field(raw, 0), codes, out=out).add_(f16_field(raw, 2))


def dequantize_q5_0(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    codes = _unpack_nibbles(raw[:, 6:]) | _unpack_high_bits(raw[:, 2:6])
    return torch.mul(f16_field(raw, 0), codes.to(torch.float32).sub_(16), out=out)


def dequantize_q5_1(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    codes = _unpack_nibbles(raw[:, 8:]) | _unpack_high_bits(raw[:, 4:8])
    return torch.mul(f16_field(raw, 0), codes.to(torch.float32), out=out).add_(f16_field(raw, 2))
