"""Dequantizers for the K-quants (256-element super-blocks), vectorised over all blocks.

Each one unpacks ggml's block layout (ggml-common.h) and then does the same float32 operations,
in the same order, as gguf-py's numpy dequantizer, so the results are bit-identical to it.
Every function takes uint8 blocks [n, type_size] and writes float32 [n, 256] into `out`, on the
same device.
"""

from __future__ import annotations

import torch

from app.core.quant import kquant_search_cpu
from app.core.quant.kquant_search import nearest_int
from app.core.quant.legacy import f16_field, first_absmax


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


def dequantize_q2_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    scales, qs = raw[:, :16], raw[:, 16:80]
    d, dmin = f16_field(raw, 80), f16_field(raw, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _crumbs(qs, 2).reshape(n, 16, 16).to(torch.float32)
    return torch.sub(dl * q, ml, out=out.view(n, 16, 16))


def dequantize_q3_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
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
    return torch.mul(dl, (ql - qh).to(torch.float32), out=out.view(n, 16, 16))


def _sub_block_scales(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K header: each of the 8 sub-blocks' scale and min, as (n, 8, 1) floats."""
    n = raw.shape[0]
    d, dmin = f16_field(raw, 0), f16_field(raw, 2)
    scales, mins = scale_min_k4(raw[:, 4:16])
    return ((d * scales.to(torch.float32)).reshape(n, 8, 1),
            (dmin * mins.to(torch.float32)).reshape(n, 8, 1))


def dequantize_q4_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    dl, ml = _sub_block_scales(raw)
    q = _nibbles(raw[:, 16:], 32).reshape(n, 8, 32).to(torch.float32)
    return torch.sub(dl * q, ml, out=out.view(n, 8, 32))


def dequantize_q5_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    dl, ml = _sub_block_scales(raw)
    low = _nibbles(raw[:, 48:], 32).reshape(n, 8, 32)
    high = _bits(raw[:, 16:48]).reshape(n, 8, 32)
    q = (low | (high << 4)).to(torch.float32)
    return torch.sub(dl * q, ml, out=out.view(n, 8, 32))


def dequantize_q6_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    ql, qh = raw[:, :128], raw[:, 128:192]
    scales = raw[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = f16_field(raw, 208)
    dl = (d * scales).reshape(n, 16, 1)
    low = _nibbles(ql, 64).reshape(n, 8, 32)
    high = _crumbs(qh, 2).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).to(torch.float32)
    return torch.mul(dl, q, out=out.view(n, 16, 16))


def dequantize_q8_k(raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # block_q8_K: float d, int8 qs[256], int16 bsums[16] (the sums are only for dot products).
    d = raw[:, :4].contiguous().view(torch.float32)
    return torch.mul(raw[:, 4:260].view(torch.int8).to(torch.float32), d, out=out)


# ---------------------------------------------------------------- Q6_K quantizer
#
# ggml's quantize_row_q6_K_ref (no importance matrix), vectorised over every 16-element
# sub-block: float32 throughout, sums accumulated element by element in the reference's order,
# round-half-to-even like nearest_int(), the first maximum on ties. That reproduces
# llama-quantize's bytes; any reordering of the sums would not.

GROUP_MAX_EPS = 1e-15
_NMAX = 32
# make_qx_quants tries iscale = -nmax / max first, then -(nmax + 0.1f * is) / max, is = ±1..9.
_STEPS = [0] + [i for i in range(-9, 10) if i]


def _levels(iscales: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x))) for finite products. torch.round is
    nearest_int() there: both round half to even."""
    return torch.round(iscales * x).clamp_(-_NMAX, _NMAX - 1)


def _make_qx_quants(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(16, 32, x, L, rmse_type=1, NULL) for sub-blocks x [n, 16] → (scale [n],
    L [n, 16] as float codes 0..63)."""
    if kquant_search_cpu.handles(x):
        return kquant_search_cpu.make_qx_quants(x, None, _NMAX)
    peak = first_absmax(x)  # signed; 0 for an all-zero sub-block
    zero = peak.abs() < GROUP_MAX_EPS
    steps = torch.tensor(_STEPS, dtype=torch.float32, device=x.device)
    tenth = torch.tensor(0.1, dtype=torch.float32, device=x.device)
    numerators = _NMAX + tenth * steps  # float32 like the C; step 0 gives nmax exactly
    # One row per try, sub-blocks along the contiguous dimension so that each step below is a
    # plain vector op. An all-zero sub-block divides by 1 instead of 0 (its result is replaced
    # at the end), which keeps NaN out of the sums.
    iscales = (-numerators).unsqueeze(1) / torch.where(zero, 1.0, peak).reshape(1, -1)
    sum_lx, sum_l2 = qx_sums(iscales, x)
    scale, chosen = qx_choose(iscales, sum_lx, sum_l2)
    # The C stores L for the winning try; recomputing it with that iscale gives the same codes.
    codes = _levels(chosen.unsqueeze(1), x) + _NMAX
    zero = zero.squeeze(1)
    return torch.where(zero, 0.0, scale), torch.where(zero.unsqueeze(1), 0.0, codes)


def qx_choose(iscales: torch.Tensor, sum_lx: torch.Tensor,
              sum_l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants' choice among its tries: try 0 first, then each later try that has
    suml2 > 0 and sumlx*sumlx > best*suml2 (best = scale*sumlx of the last taken). Returns
    (scale [n], the chosen try's iscale [n])."""
    scale = torch.where(sum_l2[0] != 0, sum_lx[0] / sum_l2[0], 0.0)
    best = scale * sum_lx[0]
    chosen = iscales[0]
    for k in range(1, iscales.shape[0]):
        lx, l2 = sum_lx[k], sum_l2[k]
        better = (l2 > 0) & (lx * lx > best * l2)
        scale = torch.where(better, lx / l2, scale)
        best = torch.where(better, scale * lx, best)
        chosen = torch.where(better, iscales[k], chosen)
    return scale, chosen


def qx_sums(iscales: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants' sums for every try at once, with w = x * x: sumlx and suml2 [19, n],
    element by element in order from 0.0f (sumlx += (w * x) * l, suml2 += (w * l) * l)."""
    xt = x.t().contiguous()  # [16, n]
    weights = xt * xt
    weighted_x = weights * xt
    sum_lx = torch.zeros_like(iscales)  # [19, n]
    sum_l2 = torch.zeros_like(iscales)
    levels, term = torch.empty_like(iscales), torch.empty_like(iscales)
    for i in range(xt.shape[0]):  # element by element, in the reference's order
        torch.mul(iscales, xt[i], out=levels)
        levels.round_().clamp_(-_NMAX, _NMAX - 1)  # nearest_int() for finite values
        sum_lx.add_(torch.mul(weighted_x[i], levels, out=term))  # (w * x) * l
        sum_l2.add_(torch.mul(weights[i], levels, out=term).mul_(levels))  # (w * l) * l
    return sum_lx, sum_l2


def quantize_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """float32 [n, 256] → Q6_K blocks [n, 210]: ql[128], qh[64], int8 scales[16], f16 d."""
    n = blocks.shape[0]
    sub_scales, codes = _make_qx_quants(blocks.reshape(n * 16, 16))
    sub_scales, codes = sub_scales.reshape(n, 16), codes.reshape(n, 16, 16)
    # `fabsf(scale) > max_abs_scale` never picks a NaN scale (from float overflow) in the C.
    magnitudes = sub_scales.abs().nan_to_num(nan=0.0)
    max_at = magnitudes.argmax(dim=1, keepdim=True)
    max_scale = sub_scales.gather(1, max_at)
    empty = magnitudes.gather(1, max_at) < GROUP_MAX_EPS  # memset(0): the whole block is 0
    iscale = -128.0 / torch.where(empty, 1.0, max_scale)
    d = (1 / iscale).to(torch.float16)
    scales = nearest_int(iscale * sub_scales).clamp_(max=127)
    d_sub = (d.to(torch.float32) * scales).unsqueeze(2)  # [n, 16, 1]
    if kquant_search_cpu.handles(blocks, d_sub):
        codes = kquant_search_cpu.requantize(blocks.reshape(n, 16, 16), codes, d_sub, None,
                                             -32, 31, offset=32)
    else:
        requantized = nearest_int(blocks.reshape(n, 16, 16) / d_sub).clamp_(-32, 31) + 32
        codes = torch.where(d_sub == 0, codes, requantized)
    codes = codes.to(torch.uint8).reshape(n, 2, 4, 32)
    ql = (codes[:, :, 0:2] & 0x0F) | ((codes[:, :, 2:4] & 0x0F) << 4)  # [n, 2, 2, 32]
    high = codes >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = torch.cat([ql.reshape(n, 128), qh.reshape(n, 64),
                     scales.to(torch.int8).view(torch.uint8),
                     d.view(torch.uint8).reshape(n, 2)], dim=1)
    return torch.where(empty, torch.zeros_like(out), out)
