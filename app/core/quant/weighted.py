"""Quantizers weighted by an importance matrix, as ggml's quant_weights paths write them.

ggml-quants.c's quantize_row_{q4_0,q4_1,q5_0,q5_1,q2_K,q3_K,q4_K,q5_K,q6_K}_impl, vectorised
over every block of a chunk of rows: the same searches (weighted_search.py), the same
per-element weights (`qw * sqrt(sigma2 + x*x)`, with sigma2 over the row for the 32-element
types and over the super-block for the K-quants; Q6_K uses the matrix as it is), the same
requantization with the stored float16 scales, and ggml's block layouts. float32 on the
input's device; the bytes are llama-quantize's.

Q8_0, F16, BF16 and F32 have no weighted path in ggml: llama-quantize ignores the matrix for
them, and so does `quantize`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from app.core.errors import FormatError, UnsupportedError
from app.core.quant.kquants import scale_min_k4
from app.core.quant.weighted_search import (
    GROUP_MAX_EPS,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    ordered_sum,
)

QK_K = 256
# (x [rows, n] float32, qw [rows, n] float32) → uint8 [rows, row_bytes]
RowQuantizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The searches keep a few dozen float32 copies of their input: rows of this many elements at a
# time bound that to tens of MiB.
CHUNK_ELEMENTS = 1 << 19


def _f16(values: torch.Tensor) -> torch.Tensor:
    """float32 [N] → (the float16 rounding back as float32 [N], its bytes [N, 2])."""
    half = values.to(torch.float16)
    return half.to(torch.float32), half.contiguous().view(torch.uint8).reshape(-1, 2)


def _row_sigma2(x: torch.Tensor) -> torch.Tensor:
    """sum_x2 / n_per_row over each whole row, as the 32-element types' _impl compute it."""
    return ordered_sum(x * x) / x.shape[1]


def _element_weights(x: torch.Tensor, qw: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """qw[j] * sqrtf(sigma2 + x[j]*x[j]); sigma2 broadcasts over the last dimension.

    torch's float32 sqrt on the CPU is not always correctly rounded (SLEEF); sqrtf is. The
    float64 root rounded to float32 is the correctly rounded float32 root.
    """
    energy = sigma2.unsqueeze(-1) + x * x
    return qw * torch.sqrt(energy.to(torch.float64)).to(torch.float32)


def _pack_nibbles32(codes: torch.Tensor) -> torch.Tensor:
    """32 codes per block → 16 bytes: element j low nibble, element j + 16 high nibble."""
    return (codes[:, :16] & 0x0F) | ((codes[:, 16:] & 0x0F) << 4)


def _fifth_bits32(codes: torch.Tensor) -> torch.Tensor:
    """Bit 4 of the 32 codes as a little-endian uint32: bit j from element j."""
    bits = ((codes >> 4) & 1).reshape(-1, 4, 8)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8, device=codes.device)
    return (bits * weights).sum(dim=2, dtype=torch.uint8)


# ---------------------------------------------------------------- 32-element types


def _legacy_blocks(x: torch.Tensor, qw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma2 = _row_sigma2(x)
    weights = _element_weights(x, qw, sigma2)
    return x.reshape(-1, 32), weights.reshape(-1, 32)


def quantize_q4_0(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    blocks, weights = _legacy_blocks(x, qw)
    scale, codes = make_qx_quants(blocks, weights, 8)
    _, d = _f16(scale)
    out = torch.cat([d, _pack_nibbles32(codes.to(torch.uint8))], dim=1)
    return out.reshape(x.shape[0], -1)


def quantize_q5_0(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    blocks, weights = _legacy_blocks(x, qw)
    scale, codes = make_qx_quants(blocks, weights, 16)
    _, d = _f16(scale)
    codes = codes.to(torch.uint8)
    out = torch.cat([d, _fifth_bits32(codes), _pack_nibbles32(codes)], dim=1)
    return out.reshape(x.shape[0], -1)


def _with_min(x: torch.Tensor, qw: torch.Tensor, nmax: int) -> tuple[torch.Tensor, ...]:
    blocks, weights = _legacy_blocks(x, qw)
    scale, the_min, codes = make_qkx3_quants(blocks, weights, nmax, -0.9, 0.05, 36)
    _, d = _f16(scale)
    _, m = _f16(-the_min)
    return d, m, codes.to(torch.uint8)


def quantize_q4_1(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    d, m, codes = _with_min(x, qw, 15)
    return torch.cat([d, m, _pack_nibbles32(codes)], dim=1).reshape(x.shape[0], -1)


def quantize_q5_1(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    d, m, codes = _with_min(x, qw, 31)
    out = torch.cat([d, m, _fifth_bits32(codes), _pack_nibbles32(codes)], dim=1)
    return out.reshape(x.shape[0], -1)


# ---------------------------------------------------------------- K-quants


def _super_blocks(x: torch.Tensor, qw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """[rows, n] → super-blocks [N, 256], their weights, and sum_x2 per super-block."""
    blocks = x.reshape(-1, QK_K)
    return blocks, qw.reshape(-1, QK_K), ordered_sum(blocks * blocks)


def _pack_crumbs(codes: torch.Tensor) -> torch.Tensor:
    """256 2-bit codes → 64 bytes: byte 32 * h + l holds elements 128 h + l + 32 s at bit 2 s."""
    n = codes.shape[0]
    c = codes.reshape(n, 2, 4, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(n, 64)


def _requantize(x: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, codes: torch.Tensor,
                low: int, high: int) -> torch.Tensor:
    """`if (!d) continue; l = nearest_int((x + m) / d)` clamped; groups whose d is 0 keep the
    codes of the search. x, codes [N, groups, size]; d, m [N, groups]."""
    d3 = d.unsqueeze(2)
    shifted = x if m is None else x + m.unsqueeze(2)
    fresh = nearest_int(shifted / torch.where(d3 == 0, 1.0, d3)).clamp_(low, high)
    return torch.where(d3 == 0, codes, fresh - low if low < 0 else fresh)


def quantize_q2_k(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """block_q2_K: scales[16] (scale | min << 4), qs[64], d, dmin."""
    blocks, weights, sum_x2 = _super_blocks(x, qw)
    n = blocks.shape[0]
    sigma2 = sum_x2 / QK_K
    weights = _element_weights(blocks, weights, sigma2).reshape(n * 16, 16)
    subs = blocks.reshape(n * 16, 16)
    sums = ordered_sum(weights).reshape(n, 16)
    scales, mins, codes = make_qkx3_quants(subs, weights, 3, -0.9, 0.05, 36)
    dm, ls = make_qp_quants(scales.reshape(n, 16), sums, 15)
    mm, lm = make_qp_quants(mins.reshape(n, 16), sums, 15)
    d, d_bytes = _f16(dm)
    dmin, dmin_bytes = _f16(mm)
    packed = ls.to(torch.uint8) | (lm.to(torch.uint8) << 4)
    sub_d = d.unsqueeze(1) * (packed & 0x0F).to(torch.float32)
    sub_m = dmin.unsqueeze(1) * (packed >> 4).to(torch.float32)
    codes = _requantize(blocks.reshape(n, 16, 16), sub_d, sub_m, codes.reshape(n, 16, 16), 0, 3)
    return torch.cat([packed, _pack_crumbs(codes.to(torch.uint8).reshape(n, QK_K)), d_bytes,
                      dmin_bytes], dim=1).reshape(x.shape[0], -1)


def quantize_q3_k(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """block_q3_K: hmask[32], qs[64], scales[12] (6-bit, offset 32), d."""
    blocks, weights, sum_x2 = _super_blocks(x, qw)
    n = blocks.shape[0]
    sigma2 = 2 * sum_x2 / QK_K
    weights = _element_weights(blocks, weights, sigma2).reshape(n * 16, 16)
    sums = ordered_sum(weights).reshape(n, 16)
    scales, codes = make_qx_quants(blocks.reshape(n * 16, 16), weights, 4)
    d_block, ls = make_qx_quants(scales.reshape(n, 16), sums, 32)
    ls = ls.to(torch.uint8)  # 0..63
    low = ls & 0x0F
    packed = torch.zeros((n, 12), dtype=torch.uint8, device=x.device)
    packed[:, :8] = low[:, :8] | (low[:, 8:] << 4)
    top = (ls >> 4).reshape(n, 4, 4)  # [j // 4, j % 4]
    packed[:, 8:] = top[:, 0] | (top[:, 1] << 2) | (top[:, 2] << 4) | (top[:, 3] << 6)
    d, d_bytes = _f16(d_block)
    sub_d = d.unsqueeze(1) * (ls.to(torch.float32) - 32)
    codes = _requantize(blocks.reshape(n, 16, 16), sub_d, None, codes.reshape(n, 16, 16), -4, 3)
    codes = codes.to(torch.uint8).reshape(n, 8, 32)  # hmask byte m, bit b: element 32 b + m
    high = (codes > 3).to(torch.uint8)
    bit_values = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8,
                              device=x.device).reshape(1, 8, 1)
    hmask = (high * bit_values).sum(dim=1, dtype=torch.uint8)
    crumbs = _pack_crumbs((codes - high * 4).reshape(n, QK_K))
    return torch.cat([hmask, crumbs, packed, d_bytes], dim=1).reshape(x.shape[0], -1)


def _scales_mins_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins into 12 bytes as Q4_K/Q5_K store them (uint8 arithmetic,
    so out-of-range codes overlap exactly as in the C)."""
    n = ls.shape[0]
    packed = torch.zeros((n, 12), dtype=torch.uint8, device=ls.device)
    packed[:, 0:4] = ls[:, :4]
    packed[:, 4:8] = lm[:, :4]
    packed[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    packed[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    return packed


def _q4_q5_k(x: torch.Tensor, qw: torch.Tensor, nmax: int,
             clamp_codes: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared part of Q4_K and Q5_K: header bytes [N, 16] and codes [N, 256] (uint8)."""
    blocks, weights, sum_x2 = _super_blocks(x, qw)
    n = blocks.shape[0]
    sigma2 = 2 * sum_x2 / QK_K
    weights = _element_weights(blocks, weights, sigma2).reshape(n * 8, 32)
    sums = ordered_sum(weights).reshape(n, 8)
    scales, mins, codes = make_qkx3_quants(blocks.reshape(n * 8, 32), weights, nmax, -0.9, 0.05,
                                           36)
    d_block, ls = make_qp_quants(scales.reshape(n, 8), sums, 63)
    m_block, lm = make_qp_quants(mins.reshape(n, 8), sums, 63)
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    if clamp_codes:
        ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    packed = _scales_mins_k4(ls, lm)
    d, d_bytes = _f16(d_block)
    dmin, dmin_bytes = _f16(m_block)
    sc, mn = scale_min_k4(packed)
    sub_d = d.unsqueeze(1) * sc.to(torch.float32)
    sub_m = dmin.unsqueeze(1) * mn.to(torch.float32)
    codes = _requantize(blocks.reshape(n, 8, 32), sub_d, sub_m, codes.reshape(n, 8, 32), 0,
                        nmax)
    header = torch.cat([d_bytes, dmin_bytes, packed], dim=1)
    return header, codes.to(torch.uint8).reshape(n, QK_K)


def quantize_q4_k(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """block_q4_K: d, dmin, scales[12], qs[128] (pairs of 32-element groups as nibbles)."""
    header, codes = _q4_q5_k(x, qw, 15, clamp_codes=False)
    c = codes.reshape(-1, 4, 2, 32)
    qs = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128)
    return torch.cat([header, qs], dim=1).reshape(x.shape[0], -1)


def quantize_q5_k(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """block_q5_K: d, dmin, scales[12], qh[32] (bit 2k / 2k+1 for pair k), qs[128]."""
    header, codes = _q4_q5_k(x, qw, 31, clamp_codes=True)
    c = codes.reshape(-1, 4, 2, 32)
    qs = ((c[:, :, 0] & 0x0F) | ((c[:, :, 1] & 0x0F) << 4)).reshape(-1, 128)
    high = (c >> 4).reshape(-1, 8, 32)  # bit k of qh[j] is element 32 k + j's fifth bit
    bit_values = torch.tensor([1 << b for b in range(8)], dtype=torch.uint8,
                              device=x.device).reshape(1, 8, 1)
    qh = (high * bit_values).sum(dim=1, dtype=torch.uint8)
    return torch.cat([header, qh, qs], dim=1).reshape(x.shape[0], -1)


def quantize_q6_k(x: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    """block_q6_K: ql[128], qh[64], int8 scales[16], d. The matrix weights the sub-block
    searches directly (no sigma2 term)."""
    blocks = x.reshape(-1, QK_K)
    n = blocks.shape[0]
    sub_scales, codes = make_qx_quants(blocks.reshape(n * 16, 16), qw.reshape(n * 16, 16), 32)
    sub_scales, codes = sub_scales.reshape(n, 16), codes.reshape(n, 16, 16)
    # `fabsf(scale) > max_abs_scale` keeps the first of equal magnitudes and never a NaN.
    magnitudes = sub_scales.abs().nan_to_num(nan=0.0)
    max_at = magnitudes.argmax(dim=1, keepdim=True)
    max_scale = sub_scales.gather(1, max_at).squeeze(1)
    empty = magnitudes.gather(1, max_at).squeeze(1) < GROUP_MAX_EPS
    iscale = -128.0 / torch.where(empty, 1.0, max_scale)
    d, d_bytes = _f16(1 / iscale)
    scales = nearest_int(iscale.unsqueeze(1) * sub_scales).clamp_(max=127)
    sub_d = d.unsqueeze(1) * scales
    codes = _requantize(blocks.reshape(n, 16, 16), sub_d, None, codes, -32, 31)
    codes = codes.to(torch.uint8).reshape(n, 2, 4, 32)
    ql = (codes[:, :, 0:2] & 0x0F) | ((codes[:, :, 2:4] & 0x0F) << 4)
    high = codes >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = torch.cat([ql.reshape(n, 128), qh.reshape(n, 64),
                     scales.to(torch.int8).view(torch.uint8), d_bytes], dim=1)
    out = torch.where(empty.unsqueeze(1), torch.zeros_like(out), out)
    return out.reshape(x.shape[0], -1)


WEIGHTED_QUANTIZERS: dict[str, RowQuantizer] = {
    "Q4_0": quantize_q4_0,
    "Q4_1": quantize_q4_1,
    "Q5_0": quantize_q5_0,
    "Q5_1": quantize_q5_1,
    "Q2_K": quantize_q2_k,
    "Q3_K": quantize_q3_k,
    "Q4_K": quantize_q4_k,
    "Q5_K": quantize_q5_k,
    "Q6_K": quantize_q6_k,
}


def quantize_weighted(weights: torch.Tensor, type_name: str, importance: torch.Tensor,
                      row_bytes: int, *, tensor: str | None = None) -> torch.Tensor:
    """Quantize `weights` [..., n] with per-column importance: [n] for a matrix, or
    [n_mat, n] for a stacked tensor [n_mat, rows, n] (one row of weights per expert, as
    llama-quantize slices the matrix). uint8 [..., row_bytes] on the input's device."""
    quantizer = WEIGHTED_QUANTIZERS[type_name]
    n = weights.shape[-1]
    importance = importance.to(device=weights.device, dtype=torch.float32)
    if importance.dim() == 1:
        importance = importance.reshape(1, -1)
    n_mat = importance.shape[0]
    rows = weights.reshape(-1, n)
    if importance.dim() != 2 or importance.shape[1] != n or rows.shape[0] % n_mat or (
            n_mat > 1 and (weights.dim() != 3 or weights.shape[0] != n_mat)):
        raise UnsupportedError(f"importance weights of shape {list(importance.shape)} do not "
                               f"fit a tensor of shape {list(weights.shape)}", tensor=tensor,
                               hint="the importance matrix was made for another model")
    rows_per_mat = rows.shape[0] // n_mat
    out = torch.empty((rows.shape[0], row_bytes), dtype=torch.uint8, device=weights.device)
    step = max(1, CHUNK_ELEMENTS // n)
    for mat in range(n_mat):
        qw = importance[mat].reshape(1, n)
        first, last = mat * rows_per_mat, (mat + 1) * rows_per_mat
        for start in range(first, last, step):
            stop = min(start + step, last)
            chunk = rows[start:stop].to(torch.float32)
            if not bool(torch.isfinite(chunk).all()):
                # The searches would write garbage bytes for a NaN or an infinity.
                raise FormatError("the weights hold NaN or infinite values", tensor=tensor,
                                  hint="the source model is damaged")
            out[start:stop] = quantizer(chunk, qw.expand(stop - start, n))
    return out.reshape(*weights.shape[:-1], row_bytes)
