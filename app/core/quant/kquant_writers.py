"""Q2_K, Q3_K, Q4_K and Q5_K quantizers: ggml's quantize_row_qN_K_ref (no importance matrix),
vectorised over every block of a chunk.

Each one runs the scale search of kquant_search on its sub-blocks, quantizes the sub-block
scales (and mins) to 4 or 6 bits against the block's largest, requantizes the values with the
rounded scales, and packs the block as ggml-common.h lays it out. The packers take integer
codes as float tensors and are shared with the weighted quantizers.
Every function takes float32 blocks [n, 256] and returns uint8 blocks on the same device.
"""

from __future__ import annotations

import torch

from app.core.quant import kquant_search_cpu
from app.core.quant.kquant_search import (
    GROUP_MAX_EPS,
    divide,
    make_q3_quants,
    make_qkx2_quants,
    nearest_int,
    sequential_sum,
)
from app.core.quant.legacy import first_absmax

QK_K = 256


def _f16(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GGML_FP32_TO_FP16 of [n] values: (the bytes [n, 2], the value back as float32 [n])."""
    half = values.to(torch.float16)
    return half.view(torch.uint8).reshape(-1, 2), half.to(torch.float32)


def running_max(values: torch.Tensor) -> torch.Tensor:
    """`float m = 0; for (...) if (v > m) m = v;` over dim 1: never below +0.0 (and never -0.0,
    which the C's start value keeps out)."""
    top = values.amax(dim=1)
    return torch.where(top > 0, top, 0.0)


def _as_uint8(codes: torch.Tensor) -> torch.Tensor:
    """An int result stored into a uint8_t: the low 8 bits (negative values wrap)."""
    return (codes.to(torch.int32) & 0xFF).to(torch.uint8)


def _requantize(x: torch.Tensor, search_codes: torch.Tensor, d: torch.Tensor,
                dm: torch.Tensor | None, low: int, high: int) -> torch.Tensor:
    """L = clamp(nearest_int((x + dm) / d)) per sub-block, keeping the search's codes where the
    rounded scale d is 0 (the C `continue`s there). x [n, s, size]; d, dm [n, s, 1]."""
    if kquant_search_cpu.handles(x, d):
        return kquant_search_cpu.requantize(x, search_codes, d, dm, low, high)
    shifted = x if dm is None else x + dm
    fresh = nearest_int(shifted / torch.where(d == 0, 1.0, d)).clamp_(low, high)
    return torch.where(d == 0, search_codes, fresh)


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..3 [n, 256] → qs [n, 64]: byte l of each 32-byte half holds elements
    l, l+32, l+64, l+96 of that half's 128 at bits 0, 2, 4, 6."""
    q = codes.to(torch.uint8).reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 [n, 256] → [n, 128]: in each 64-element run, elements l and l+32 share
    byte l (low, high nibble)."""
    q = codes.to(torch.uint8).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def pack_scale_min_k4(scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins [n, 8] (uint8 0..63) → the 12 bytes of Q4_K/Q5_K."""
    ls_low, ls_high = scales[:, :4], scales[:, 4:]
    lm_low, lm_high = mins[:, :4], mins[:, 4:]
    return torch.cat([ls_low | ((ls_high >> 4) << 6), lm_low | ((lm_high >> 4) << 6),
                      (ls_high & 0x0F) | ((lm_high & 0x0F) << 4)], dim=1)


def _k4_scales(scales: torch.Tensor, mins: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared Q4_K/Q5_K header from the sub-block scales and mins [n, 8]: (packed 12 bytes,
    d bytes, dmin bytes, each sub-block's d [n, 8, 1] and dm [n, 8, 1] as dequantized)."""
    max_scale = running_max(scales)
    max_min = running_max(mins)
    inv_scale = torch.where(max_scale > 0, divide(63.0, torch.where(max_scale > 0, max_scale,
                                                                     1.0)), 0.0).unsqueeze(1)
    inv_min = torch.where(max_min > 0, divide(63.0, torch.where(max_min > 0, max_min, 1.0)),
                          0.0).unsqueeze(1)
    ls = _as_uint8(nearest_int(inv_scale * scales)).clamp_(max=63)
    lm = _as_uint8(nearest_int(inv_min * mins)).clamp_(max=63)
    d_bytes, d = _f16(max_scale / 63.0)
    dmin_bytes, dmin = _f16(max_min / 63.0)
    sub_d = (d.unsqueeze(1) * ls.to(torch.float32)).unsqueeze(2)
    sub_dm = (dmin.unsqueeze(1) * lm.to(torch.float32)).unsqueeze(2)
    return pack_scale_min_k4(ls, lm), d_bytes, dmin_bytes, sub_d, sub_dm


def _k4_search(blocks: torch.Tensor, nmax: int, rmin: float, nstep: int,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's per-sub-block search: weights av_x + |x| with av_x = sqrt(mean x²)."""
    n = blocks.shape[0]
    x = blocks.reshape(n * 8, 32)
    if kquant_search_cpu.handles(x):
        # The compiled search makes these weights itself.
        scales, mins, codes = kquant_search_cpu.make_qkx2_quants(x, None, nmax, rmin, 0.1,
                                                                 nstep, use_mad=False)
        return scales.reshape(n, 8), mins.reshape(n, 8), codes.reshape(n, 8, 32)
    sum_x2 = sequential_sum((x * x).t())
    # sqrtf(): torch's float32 sqrt is off by one ulp now and then on the CPU; the float64
    # root rounded to float32 is the correctly rounded one, as the C computes it.
    av_x = torch.sqrt((sum_x2 / 32).double()).float().unsqueeze(1)
    weights = av_x + x.abs()
    scales, mins, codes = make_qkx2_quants(x, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    return scales.reshape(n, 8), mins.reshape(n, 8), codes.reshape(n, 8, 32)


def quantize_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """float32 [n, 256] → Q4_K blocks [n, 144]: f16 d, f16 dmin, scales[12], qs[128]."""
    n = blocks.shape[0]
    scales, mins, codes = _k4_search(blocks, 15, -1.0, 20)
    packed, d_bytes, dmin_bytes, sub_d, sub_dm = _k4_scales(scales, mins)
    codes = _requantize(blocks.reshape(n, 8, 32), codes, sub_d, sub_dm, 0, 15)
    return torch.cat([d_bytes, dmin_bytes, packed, pack_nibbles(codes.reshape(n, 256))], dim=1)


def quantize_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """float32 [n, 256] → Q5_K blocks [n, 176]: f16 d, f16 dmin, scales[12], qh[32], qs[128]."""
    n = blocks.shape[0]
    scales, mins, codes = _k4_search(blocks, 31, -0.5, 15)
    packed, d_bytes, dmin_bytes, sub_d, sub_dm = _k4_scales(scales, mins)
    codes = _requantize(blocks.reshape(n, 8, 32), codes, sub_d, sub_dm, 0, 31)
    q = codes.to(torch.uint8).reshape(n, 8, 32)
    # qh[l] bit k: the fifth bit of element 32 * k + l.
    high = q >> 4
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
    qh = (high << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    low = (q & 0x0F).reshape(n, 256)
    return torch.cat([d_bytes, dmin_bytes, packed, qh, pack_nibbles(low)], dim=1)


def quantize_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """float32 [n, 256] → Q2_K blocks [n, 84]: scales[16] (4-bit scale | 4-bit min << 4),
    qs[64], f16 d, f16 dmin."""
    n = blocks.shape[0]
    x = blocks.reshape(n * 16, 16)
    scales, mins, codes = make_qkx2_quants(x, x.abs(), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins, codes = scales.reshape(n, 16), mins.reshape(n, 16), codes.reshape(n, 16, 16)
    max_scale = running_max(scales)
    max_min = running_max(mins)
    has_scale, has_min = (max_scale > 0).unsqueeze(1), (max_min > 0).unsqueeze(1)
    iscale = divide(15.0, torch.where(has_scale, max_scale.unsqueeze(1), 1.0))
    imin = divide(15.0, torch.where(has_min, max_min.unsqueeze(1), 1.0))
    low = torch.where(has_scale, nearest_int(iscale * scales), 0.0).to(torch.int32)
    high = torch.where(has_min, nearest_int(imin * mins), 0.0).to(torch.int32)
    packed = ((low | (high << 4)) & 0xFF).to(torch.uint8)  # `scales[j] = l; scales[j] |= l << 4`
    d_bytes, d = _f16(torch.where(has_scale.squeeze(1), max_scale / 15.0, 0.0))
    dmin_bytes, dmin = _f16(torch.where(has_min.squeeze(1), max_min / 15.0, 0.0))
    sub_d = (d.unsqueeze(1) * (packed & 0x0F).to(torch.float32)).unsqueeze(2)
    sub_dm = (dmin.unsqueeze(1) * (packed >> 4).to(torch.float32)).unsqueeze(2)
    codes = _requantize(blocks.reshape(n, 16, 16), codes, sub_d, sub_dm, 0, 3)
    return torch.cat([packed, pack_2bit(codes.reshape(n, 256)), d_bytes, dmin_bytes], dim=1)


def quantize_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """float32 [n, 256] → Q3_K blocks [n, 110]: hmask[32], qs[64], scales[12], f16 d."""
    n = blocks.shape[0]
    scales, codes = make_q3_quants(blocks.reshape(n * 16, 16), 4)
    scales, codes = scales.reshape(n, 16), codes.reshape(n, 16, 16)
    max_scale = first_absmax(scales)  # [n, 1], signed; the first largest magnitude
    has_scale = max_scale != 0
    iscale = divide(-32.0, torch.where(has_scale, max_scale, 1.0))
    levels = nearest_int(iscale * scales).clamp_(-32, 31) + 32
    levels = torch.where(has_scale, levels, 0.0).to(torch.uint8)  # 6-bit, 0..63
    d_bytes, d = _f16(torch.where(has_scale, divide(1.0, iscale), 0.0).squeeze(1))
    sub_d = (d.unsqueeze(1) * (levels.to(torch.float32) - 32)).unsqueeze(2)
    codes = _requantize(blocks.reshape(n, 16, 16), codes - 4, sub_d, None, -4, 3) + 4
    codes = codes.to(torch.uint8).reshape(n, 8, 32)
    # hmask[l] bit k: whether element 32 * k + l is above 3; qs keeps the low two bits.
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
    hmask = ((codes >> 2) << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    qs = pack_2bit((codes & 0x03).reshape(n, 256))
    return torch.cat([hmask, qs, pack_q3_scales(levels), d_bytes], dim=1)


def pack_q3_scales(levels: torch.Tensor) -> torch.Tensor:
    """Sixteen 6-bit scales [n, 16] (uint8 0..63) → Q3_K's 12 bytes: low nibbles of scales
    0-7 and 8-15 share bytes 0-7; the top two bits of scale j go to byte 8 + j % 4 at bit
    2 * (j // 4)."""
    low = levels & 0x0F
    top = (levels >> 4).reshape(-1, 4, 4)  # [n, j // 4, j % 4]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=levels.device).reshape(1, 4, 1)
    high = (top << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    return torch.cat([low[:, :8] | (low[:, 8:] << 4), high], dim=1)


__all__ = ["GROUP_MAX_EPS", "QK_K", "pack_2bit", "pack_nibbles", "pack_q3_scales",
           "pack_scale_min_k4", "quantize_q2_k", "quantize_q3_k", "quantize_q4_k",
           "quantize_q5_k"]
