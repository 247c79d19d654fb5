"""ggml's K-quant scale searches (ggml-quants.c), vectorised over many sub-blocks at once.

Bit-exactness with llama-quantize rests on doing what the C does in float32, in its order:
each sum is accumulated element by element (a Python loop over the sub-block's positions,
vectorised across sub-blocks), products are grouped as the C groups them (`w*l*x` is
`(w*l)*x`), rounding is nearest_int()'s (half to even, and its exact bit trick wherever the
value may leave nearest_int's range), and ties keep the first candidate. Any reordering of a
sum changes the last bit of some scale and then the bytes.

The searches take sub-blocks as rows ([n, size] float32) and importance weights of the same
shape where the C takes them, so a weighted (importance-matrix) quantizer can call them with
its own weights.
"""

from __future__ import annotations

import numpy as np
import torch

from app.core.quant.legacy import first_absmax

GROUP_MAX_EPS = 1e-15
_MAGIC = 12582912.0  # 1.5 * 2**23


def nearest_int(values: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int() as float32: add 1.5 * 2**23 and read the low mantissa bits. It
    rounds half to even for |v| < 2**22 and reproduces the C's result for anything else
    (huge values, inf and NaN give what the C gives, not what round() gives)."""
    bits = (values + _MAGIC).view(torch.int32)
    return ((bits & 0x7FFFFF) - 0x400000).to(torch.float32)


def _f32(value: float) -> np.float32:
    return np.float32(value)


def divide(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator as the C divides: `3 / tensor` in torch multiplies by the
    rounded reciprocal instead, which differs in the last bit for most values."""
    top = torch.tensor(numerator, dtype=torch.float32, device=denominator.device)
    return torch.div(top, denominator)


def sequential_sum(terms: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Sum over `dim` one element after another, like a C loop (torch.sum would pair them).
    Several sums stacked along another dimension advance together, one add per position."""
    total = terms.select(dim, 0).clone()
    for i in range(1, terms.shape[dim]):
        total.add_(terms.select(dim, i))
    return total


def make_qkx2_quants(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants() for sub-blocks x [n, size] with weights [n, size].

    Returns (scale [n], the_min [n] (stored negated, >= 0), L [n, size] as float codes
    0..nmax). `nstep` >= 1 (every K-quant uses 15 or 20 steps).
    """
    xt = x.t().contiguous()  # [size, n]: each position is a contiguous vector over sub-blocks
    wt = weights.t().contiguous()
    minimum = xt.amin(dim=0).clamp_(max=0.0)  # `if (min > 0) min = 0`
    high = xt.amax(dim=0)
    flat = high == minimum
    sum_w = sequential_sum(wt)
    sum_x = sequential_sum(wt * xt)
    # A flat sub-block divides by 1 instead of 0; its result is replaced at the end.
    iscale = divide(nmax, torch.where(flat, 1.0, high - minimum))
    scale = divide(1.0, iscale)
    best_error = _error(scale, _levels(xt, minimum, iscale, nmax), minimum, xt, wt, use_mad)
    # The codes are recomputed at the end from the winning try's iscale and min.
    chosen_iscale, chosen_low = iscale, minimum
    products = torch.empty((3, *xt.shape), dtype=xt.dtype, device=xt.device)
    # The tries run in order and are not independent: a better try replaces `min`, and the
    # next tries scale x - min over max - min with the new one, as the C does.
    for step in range(nstep + 1):
        numerator = _f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)
        iscale = divide(float(numerator), torch.where(flat, 1.0, high - minimum))
        aux = _levels(xt, minimum, iscale, nmax)
        # The products of every position at once (elementwise, so exact); only the sums
        # need the reference's order.
        wl = torch.mul(wt, aux, out=products[0])
        torch.mul(wl, aux, out=products[1])
        torch.mul(wl, xt, out=products[2])
        sum_l, sum_l2, sum_xl = sequential_sum(products, dim=1)
        det = sum_w * sum_l2 - sum_l * sum_l
        try_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        try_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clipped = try_min > 0
        try_scale = torch.where(clipped, sum_xl / sum_l2, try_scale)
        try_min = torch.where(clipped, 0.0, try_min)
        try_error = _error(try_scale, aux, try_min, xt, wt, use_mad)
        better = (det > 0) & (try_error < best_error)
        best_error = torch.where(better, try_error, best_error)
        scale = torch.where(better, try_scale, scale)
        chosen_iscale = torch.where(better, iscale, chosen_iscale)
        chosen_low = torch.where(better, minimum, chosen_low)
        minimum = torch.where(better, try_min, minimum)
    codes = _levels(xt, chosen_low, chosen_iscale, nmax)
    scale = torch.where(flat, 0.0, scale)
    codes = torch.where(flat, 0.0, codes)
    return scale, -minimum, codes.t()


def _levels(xt: torch.Tensor, low: torch.Tensor, iscale: torch.Tensor,
            nmax: int) -> torch.Tensor:
    """MAX(0, MIN(nmax, nearest_int(iscale * (x - min)))); the product stays within nearest_int's
    range, where torch.round agrees with it."""
    return (xt - low).mul_(iscale).round_().clamp_(0, nmax)


def _error(scale: torch.Tensor, codes: torch.Tensor, minimum: torch.Tensor, xt: torch.Tensor,
           wt: torch.Tensor, use_mad: bool) -> torch.Tensor:
    """sum of w * |scale*L + min - x| (or its square) over positions, in order. codes, xt and
    wt are [size, n]; scale and minimum [n]."""
    diff = (scale * codes).add_(minimum).sub_(xt)
    diff = diff.abs_() if use_mad else diff.mul_(diff)
    return sequential_sum(diff.mul_(wt))


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(size, nmax, x, L, do_rmse=true) for sub-blocks x [n, size].

    Returns (scale [n], L [n, size] as float codes 0..2*nmax-1; 0 for an all-zero sub-block).
    """
    peak = first_absmax(x).squeeze(1)
    zero = peak.abs() < GROUP_MAX_EPS
    iscale = divide(-nmax, torch.where(zero, 1.0, peak))
    xt = x.t().contiguous()  # [size, n]
    size = xt.shape[0]
    weights = xt * xt
    wx = weights * xt  # w*x[i], the left part of every `w*x[i]*l`
    levels = torch.round(iscale * xt).clamp_(-nmax, nmax - 1)  # bounded: round is nearest_int
    sum_lx = sequential_sum(wx * levels)
    sum_l2 = sequential_sum(weights * levels * levels)
    # Up to five passes; a sub-block whose pass changed nothing would change nothing in the
    # next one either, so running every pass for every sub-block gives the C's result.
    for _ in range(5):
        for i in range(size):
            level = levels[i]
            slx = sum_lx - wx[i] * level
            sl2 = sum_l2 - weights[i] * level * level
            new = nearest_int(xt[i] * sl2 / slx).clamp_(-nmax, nmax - 1)
            slx_new = slx + wx[i] * new
            sl2_new = sl2 + weights[i] * new * new
            take = ((slx > 0) & (new != level) & (sl2_new > 0)
                    & (slx_new * slx_new * sum_l2 > sum_lx * sum_lx * sl2_new))
            levels[i] = torch.where(take, new, level)
            sum_lx = torch.where(take, slx_new, sum_lx)
            sum_l2 = torch.where(take, sl2_new, sum_l2)
    scale = torch.where(sum_l2 > 0, sum_lx / sum_l2, 0.0)
    codes = levels + nmax
    return torch.where(zero, 0.0, scale), torch.where(zero, 0.0, codes).t()
