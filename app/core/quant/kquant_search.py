"""ggml's K-quant scale searches (ggml-quants.c), vectorised over many sub-blocks at once.

Bit-exactness with llama-quantize rests on doing what the C does in float32, in its order:
each sum is accumulated element by element (position after position, vectorised across
sub-blocks: one NumPy reduction on the CPU, a loop of adds elsewhere), products are grouped
as the C groups them (`w*l*x` is `(w*l)*x`), rounding is nearest_int()'s (half to even, and
its exact bit trick wherever the value may leave nearest_int's range), and ties keep the
first candidate. Any reordering of a sum changes the last bit of some scale and then the
bytes.

The searches take sub-blocks as rows ([n, size] float32) and importance weights of the same
shape where the C takes them, so a weighted (importance-matrix) quantizer can call them with
its own weights. On the CPU, make_qkx2_quants runs the compiled kernel of kquant_search_cpu
(the same operations, one sub-block per vector lane); the torch version serves every other
device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from app.core.quant import kquant_search_cpu
from app.core.quant.legacy import first_absmax

GROUP_MAX_EPS = 1e-15
_MAGIC = 12582912.0  # 1.5 * 2**23


def nearest_int(values: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int() as float32: add 1.5 * 2**23 and read the low mantissa bits. It
    rounds half to even for |v| < 2**22 and reproduces the C's result for anything else
    (huge values and inf give what the C gives, not what round() gives).

    NaN gives 0, as in the C, whose NaNs all come from x86 float arithmetic (inf/inf, inf*0
    of overflowed scales) and carry no payload: the low bits read 0x400000. A NaN here may
    carry one (CUDA makes 0x7FFFFFFF, torch's float16 conversion on the CPU too, which would
    read as 4194303), so it is replaced by the magic number itself first."""
    shifted = (values + _MAGIC).nan_to_num_(nan=_MAGIC, posinf=math.inf, neginf=-math.inf)
    bits = shifted.view(torch.int32)
    return ((bits & 0x7FFFFF) - 0x400000).to(torch.float32)


def _f32(value: float) -> np.float32:
    return np.float32(value)


def divide(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator as the C divides: `3 / tensor` in torch multiplies by the
    rounded reciprocal instead, which differs in the last bit for most values."""
    top = torch.tensor(numerator, dtype=torch.float32, device=denominator.device)
    return torch.div(top, denominator)


def sequential_sum(terms: torch.Tensor, dim: int = 0, out: torch.Tensor | None = None,
                   from_zero: bool = False) -> torch.Tensor:
    """Sum over `dim` one element after another, like a C loop (torch.sum would pair them).
    Several sums stacked along other dimensions advance together, one add per position.
    `out`, when given, receives the sums (a contiguous tensor of the result's shape).
    `from_zero` is `float s = 0; s += t[0]; ...` (an all-(-0.0) sum comes out +0.0) instead
    of `float s = t[0]; s += t[1]; ...`.

    On the CPU this is one NumPy reduction: NumPy adds along an axis that is not the innermost
    in memory by sweeping the output row once per position, in order, which is the C's
    order (pairwise summation only applies along the innermost axis). Starting from -0.0,
    the one value whose addition changes nothing, keeps the sign of an all-(-0.0) sum as the
    C's `sum = first; sum += ...` does.
    """
    if _numpy_sums_in_order(terms, dim) and (out is None or out.is_contiguous()):
        if not terms.is_contiguous():
            terms = terms.contiguous()
        with np.errstate(all="ignore"):  # overflow to inf is the C's result, silently
            total = np.add.reduce(terms.numpy(), axis=dim, initial=0.0 if from_zero else -0.0,
                                  out=None if out is None else out.numpy())
        return torch.from_numpy(total) if out is None else out
    first = terms.select(dim, 0)
    if out is None:
        out = torch.zeros_like(first) if from_zero else first.clone()
    else:
        out.zero_() if from_zero else out.copy_(first)
    for i in range(0 if from_zero else 1, terms.shape[dim]):
        out.add_(terms.select(dim, i))
    return out


def _numpy_sums_in_order(terms: torch.Tensor, dim: int) -> bool:
    """Whether NumPy reduces `dim` of `terms` (made contiguous) position by position: a CPU
    float32 tensor where the reduced axis is followed by at least two elements per position
    (a reduction along the innermost axis would be pairwise)."""
    if dim < 0:
        dim += terms.dim()
    return (kquant_search_cpu.ENABLED and terms.device.type == "cpu"
            and terms.dtype == torch.float32
            and not terms.requires_grad and terms.shape[dim] > 1
            and math.prod(terms.shape[dim + 1:]) >= 2)


# Rows of the per-try sums [sum_l, sum_l2, sum_xl, sum_x] that make the three numerators
# [D, scale * D, min * D] as [sum_w, sum_w, sum_x] * (rows _SECOND) - sum_l * (rows _THIRD):
# D = sum_w*sum_l2 - sum_l*sum_l, sum_w*sum_xl - sum_x*sum_l, sum_l2*sum_x - sum_l*sum_xl
# (a product of two floats is the same either way round).
_SECOND = (1, 2, 1)
_THIRD = (0, 3, 2)


def make_qkx2_quants(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants() for sub-blocks x [n, size] with weights [n, size].

    Returns (scale [n], the_min [n] (stored negated, >= 0), L [n, size] as float codes
    0..nmax), on the device of x. `nstep` >= 1 (every K-quant uses 15 or 20 steps). CPU
    tensors go through the compiled kernel (same results, many times faster there).
    """
    if kquant_search_cpu.handles(x, weights):
        return kquant_search_cpu.make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep,
                                                  use_mad)
    return make_qkx2_quants_torch(x, weights, nmax, rmin, rdelta, nstep, use_mad)


def make_qkx2_quants_torch(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float,
                           rdelta: float, nstep: int, use_mad: bool,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx2_quants in torch, on any device (what make_qkx2_quants runs off the CPU).

    Each try is a fixed handful of whole-plane operations ([size, n]: each position a
    contiguous vector over sub-blocks) and of [n]-vector ones; the buffers are allocated once.
    """
    size, n = x.shape[1], x.shape[0]
    device = x.device
    f32 = torch.float32
    # planes: the try's codes, x, then the products w*l, (w*l)*l, (w*l)*x, then error terms.
    planes = torch.empty((6, size, n), dtype=f32, device=device)
    trial, xt, products, terms = planes[0], planes[1], planes[2:5], planes[5]
    xt.copy_(x.t())
    wt = weights.t().contiguous()
    minimum = xt.amin(dim=0).clamp_(max=0.0)  # `if (min > 0) min = 0`
    high = xt.amax(dim=0)
    flat = high == minimum
    # A flat sub-block (the C returns early) gets a made-up finite span instead of 0: its
    # codes are all 0, so no try has D > 0 and nothing changes; its result is replaced below.
    high = torch.where(flat, 1.0 - minimum, high)
    sums = torch.empty((4, n), dtype=f32, device=device)  # sum_l, sum_l2, sum_xl, sum_x
    sum_w = sequential_sum(wt)
    sequential_sum(torch.mul(wt, xt, out=terms), out=sums[3])
    first = torch.stack([sum_w, sum_w, sums[3]])
    second = torch.tensor(_SECOND, device=device)
    third = torch.tensor(_THIRD, device=device)
    # Every try's iscale and the min it started from, and each try's scale: the winner's are
    # picked at the end. Slot 0 is the initial guess, slot k + 1 try k.
    iscales = torch.empty((nstep + 2, n), dtype=f32, device=device)
    starts = torch.empty((nstep + 2, n), dtype=f32, device=device)
    scales = torch.empty((nstep + 2, n), dtype=f32, device=device)
    starts[0] = minimum
    iscales[0] = divide(nmax, high - minimum)
    scales[0] = divide(1.0, iscales[0])
    _levels(trial, xt, minimum, iscales[0], nmax)
    best_error = _error(terms, scales[0], trial, minimum, xt, wt, use_mad)
    chosen = torch.zeros(n, dtype=f32, device=device)
    numerators = [torch.tensor(float(_f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)),
                               dtype=f32, device=device) for step in range(nstep + 1)]
    # The tries run in order and are not independent: a better try replaces `min`, and the
    # next tries scale x - min over max - min with the new one, as the C does.
    for step in range(nstep + 1):
        iscale = torch.div(numerators[step], high - minimum, out=iscales[step + 1])
        starts[step + 1] = minimum
        _levels(trial, xt, minimum, iscale, nmax)
        # The products of every position at once (elementwise, so exact); only the sums
        # need the reference's order.
        wl = torch.mul(wt, trial, out=products[0])
        torch.mul(wl, planes[0:2], out=products[1:3])  # (w*l)*l and (w*l)*x
        sequential_sum(products, dim=1, out=sums[0:3])  # sum_l, sum_l2, sum_xl
        numer = torch.mul(first, sums[second]).sub_(sums[0] * sums[third])
        det = numer[0]
        tries = numer[1:].div_(det)  # [scale, min]
        try_min = tries[1]
        clipped = try_min > 0
        try_scale = torch.where(clipped, sums[2] / sums[1], tries[0], out=scales[step + 1])
        try_min = torch.where(clipped, 0.0, try_min)
        try_error = _error(terms, try_scale, trial, try_min, xt, wt, use_mad)
        better = (det > 0).logical_and_(try_error < best_error)
        best_error = torch.where(better, try_error, best_error)
        chosen = torch.where(better, float(step + 1), chosen)
        minimum = torch.where(better, try_min, minimum)
    pick = chosen.long().unsqueeze(0)
    scale = scales.gather(0, pick).squeeze(0)
    chosen_iscale = iscales.gather(0, pick)
    # The winning try started from the min before it: slot k + 1 ran from starts[k + 1].
    chosen_low = starts.gather(0, pick)
    codes = _levels(trial, xt, chosen_low.squeeze(0), chosen_iscale.squeeze(0), nmax)
    scale = torch.where(flat, 0.0, scale)
    codes = torch.where(flat, 0.0, codes)
    return scale, -minimum, codes.t()


def _levels(out: torch.Tensor, xt: torch.Tensor, low: torch.Tensor, iscale: torch.Tensor,
            nmax: int) -> torch.Tensor:
    """MAX(0, MIN(nmax, nearest_int(iscale * (x - min)))) into `out`, with nearest_int's bit
    trick: a span max - min that is denormal makes iscale inf, and the C's codes for inf and
    NaN products are 0, not what round() and a clamp give."""
    torch.sub(xt, low, out=out).mul_(iscale)
    return out.copy_(nearest_int(out)).clamp_(0, nmax)


def _error(out: torch.Tensor, scale: torch.Tensor, codes: torch.Tensor, minimum: torch.Tensor,
           xt: torch.Tensor, wt: torch.Tensor, use_mad: bool) -> torch.Tensor:
    """sum of w * |scale*L + min - x| (or its square) over positions, in order, with `out` as
    the scratch plane. codes, xt and wt are [size, n]; scale and minimum [n]."""
    diff = torch.mul(codes, scale, out=out).add_(minimum).sub_(xt)
    diff = diff.abs_() if use_mad else diff.mul_(diff)
    return sequential_sum(diff.mul_(wt))


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_q3_quants(size, nmax, x, L, do_rmse=true) for sub-blocks x [n, size].

    Returns (scale [n], L [n, size] as float codes 0..2*nmax-1; 0 for an all-zero sub-block).
    CPU tensors go through the compiled kernel.
    """
    if kquant_search_cpu.handles(x):
        return kquant_search_cpu.make_q3_quants(x, nmax)
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
