"""ggml's K-quant scale searches compiled for the CPU (numba): make_qkx2_quants (which is also
make_qkx3_quants with weights), make_qx_quants and make_q3_quants, and the requantization pass
of the K-quant writers, each doing the C's float32 operations in the C's order for every
sub-block.

Bit-exactness rests on compiling the C's own sequence of float32 operations: every constant
and every int-to-float conversion is an explicit np.float32 (numba would otherwise widen a
float32 expression to float64), nothing is compiled with fastmath (no reassociation, no fused
multiply-add), sums run element by element from the C's start values, and nearest_int() is the
C's bit trick.

Speed: the C is bound by the latency of its in-order sums (each add waits for the one
before). These kernels run LANES sub-blocks side by side instead, transposed into small tiles
[size, LANES] that stay in the L1 cache: for each position, one vector operation advances the
sums of every lane, so each lane's sum is still added in the C's order while the vector units
stay busy. Choices the C makes per sub-block (a better try, a clipped min) are per-lane
selects. The kernels release the GIL, so the converter's worker threads use every core, and
compiled code is cached on disk where numba finds a writable folder (the package's
__pycache__, NUMBA_CACHE_DIR, the user's cache folder): only the first run on a machine
compiles. Where it finds none (an installed copy on a read-only file system with no writable
home), each process compiles them again rather than failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

f32 = np.float32
# Sub-blocks searched side by side. Measured for Q4_K (CPU s per Mi elements): 16 lanes 0.030,
# 32 lanes 0.019, 64 lanes 0.017; the three [32, 64] float32 tiles (24 KiB) fit the L1 cache.
LANES = 64
_MAGIC = f32(12582912.0)  # 1.5 * 2**23: nearest_int()'s rounding constant
_GROUP_MAX_EPS = f32(1e-15)
_ZERO = f32(0.0)
_ONE = f32(1.0)
_TENTH = f32(0.1)
# Division by zero gives inf or NaN as in C instead of raising.
_JIT = dict(nogil=True, error_model="numpy")


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """njit(**options, **_JIT), cached on disk when numba has somewhere to write the cache.
    numba raises at decoration ("cannot cache function ...: no locator available") when none
    of its cache folders is writable; without this fallback the import would fail and no
    K-quant could be written on such a machine."""
    def decorate(function: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options, **_JIT)(function)
        except RuntimeError as exc:
            if "cannot cache" not in str(exc):
                raise
            return njit(cache=False, **options, **_JIT)(function)

    return decorate


@intrinsic
def _float_bits(typingctx, value):  # noqa: ANN001, ANN202 (numba's intrinsic protocol)
    """The bits of a float32 as an int32 (the C's memcpy), in a register."""
    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@_compiled(inline="always")
def _level(value: np.float32, low: np.float32, high: np.float32) -> np.float32:
    """MAX(low, MIN(high, nearest_int(value))) as a float32. nearest_int(): add 1.5 * 2**23 in
    float32 and read the low mantissa bits, which gives the C's integer for any input, NaN
    included. That integer lies within ±2**22, so it is exact as a float32, and clamping it
    as one (vector float ops rather than 64-bit integer ones) gives the C's result."""
    bits = _float_bits(value + _MAGIC) & np.int32(0x7FFFFF)
    level = f32(np.int32(bits)) - f32(0x400000)
    level = high if level > high else level
    return low if level < low else level


@_compiled()
def qkx2(x: np.ndarray, weights: np.ndarray, own_weights: bool, nmax: int,
         numerators: np.ndarray, use_mad: bool, scales: np.ndarray, the_mins: np.ndarray,
         codes: np.ndarray) -> None:
    """make_qkx2_quants(size, nmax, x[r], weights[r], L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad) for every row r of x [n, size]; numerators[k] is `rmin + rdelta*k + nmax` as the C
    rounds it. `own_weights` makes Q4_K's and Q5_K's weights instead (av_x + fabsf(x), av_x =
    sqrtf(sum of x² / size)) and leaves `weights` unread. Writes scales [n], the_mins [n] and
    codes [n, size] (float codes 0..nmax)."""
    n, size = x.shape
    xt = np.zeros((size, LANES), f32)
    wt = np.zeros((size, LANES), f32)
    trial = np.empty((size, LANES), f32)
    low = np.empty(LANES, f32)
    high = np.empty(LANES, f32)
    sum_w = np.empty(LANES, f32)
    sum_x = np.empty(LANES, f32)
    scale = np.empty(LANES, f32)
    best_error = np.empty(LANES, f32)
    best_iscale = np.empty(LANES, f32)
    best_start = np.empty(LANES, f32)  # the min the best try started from
    iscale = np.empty(LANES, f32)
    sum_l = np.empty(LANES, f32)
    sum_l2 = np.empty(LANES, f32)
    sum_xl = np.empty(LANES, f32)
    error = np.empty(LANES, f32)
    this_scale = np.empty(LANES, f32)
    this_min = np.empty(LANES, f32)
    det = np.empty(LANES, f32)
    flat = np.empty(LANES, np.bool_)
    flat_min = np.empty(LANES, f32)
    top = f32(nmax)
    for first in range(0, n, LANES):
        count = min(LANES, n - first)
        # The tile: lanes past the end repeat the last sub-block (their results are dropped).
        for j in range(LANES):
            row = first + min(j, count - 1)
            for i in range(size):
                xt[i, j] = x[row, i]
        if own_weights:
            for j in range(LANES):
                sum_l[j] = _ZERO
            for i in range(size):
                for j in range(LANES):
                    sum_l[j] += xt[i, j] * xt[i, j]
            for j in range(LANES):
                # sqrtf: the float64 root of a float32 rounds to the correctly rounded one.
                iscale[j] = f32(np.sqrt(np.float64(sum_l[j] / f32(size))))
            for i in range(size):
                for j in range(LANES):
                    wt[i, j] = iscale[j] + abs(xt[i, j])
        else:
            for j in range(LANES):
                row = first + min(j, count - 1)
                for i in range(size):
                    wt[i, j] = weights[row, i]
        for j in range(LANES):
            low[j] = xt[0, j]
            high[j] = xt[0, j]
            sum_w[j] = wt[0, j]
            sum_x[j] = wt[0, j] * xt[0, j]
        for i in range(1, size):
            for j in range(LANES):
                v = xt[i, j]
                low[j] = v if v < low[j] else low[j]
                high[j] = v if v > high[j] else high[j]
                sum_w[j] += wt[i, j]
                sum_x[j] += wt[i, j] * v
        for j in range(LANES):
            low[j] = _ZERO if low[j] > 0 else low[j]
            flat[j] = high[j] == low[j]
            flat_min[j] = low[j]
            iscale[j] = top / (high[j] - low[j])
            scale[j] = _ONE / iscale[j]
            best_error[j] = _ZERO
            best_iscale[j] = iscale[j]
            best_start[j] = low[j]
        for i in range(size):
            for j in range(LANES):
                level = _level(iscale[j] * (xt[i, j] - low[j]), _ZERO, top)
                diff = scale[j] * level + low[j] - xt[i, j]
                diff = abs(diff) if use_mad else diff * diff
                best_error[j] += wt[i, j] * diff
        for step in range(numerators.shape[0]):
            for j in range(LANES):
                iscale[j] = numerators[step] / (high[j] - low[j])
                sum_l[j] = _ZERO
                sum_l2[j] = _ZERO
                sum_xl[j] = _ZERO
            for i in range(size):
                for j in range(LANES):
                    level = _level(iscale[j] * (xt[i, j] - low[j]), _ZERO, top)
                    trial[i, j] = level
                    wl = wt[i, j] * level
                    sum_l[j] += wl
                    sum_l2[j] += wl * level
                    sum_xl[j] += wl * xt[i, j]
            for j in range(LANES):
                det[j] = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j]
                a_scale = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det[j]
                a_min = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det[j]
                clipped = a_min > 0
                this_scale[j] = sum_xl[j] / sum_l2[j] if clipped else a_scale
                this_min[j] = _ZERO if clipped else a_min
                error[j] = _ZERO
            # Every lane's error is summed; a lane with D <= 0 (the C skips it) drops it.
            for i in range(size):
                for j in range(LANES):
                    diff = this_scale[j] * trial[i, j] + this_min[j] - xt[i, j]
                    diff = abs(diff) if use_mad else diff * diff
                    error[j] += wt[i, j] * diff
            for j in range(LANES):
                better = det[j] > 0 and error[j] < best_error[j]
                best_error[j] = error[j] if better else best_error[j]
                scale[j] = this_scale[j] if better else scale[j]
                best_iscale[j] = iscale[j] if better else best_iscale[j]
                best_start[j] = low[j] if better else best_start[j]
                low[j] = this_min[j] if better else low[j]
        for j in range(count):
            row = first + j
            # max == min: the C returns at once, with L = 0, scale 0 and that min. Otherwise
            # the C keeps the winning try's L: the same levels again from its iscale and the
            # min it started from.
            for i in range(size):
                level = _level(best_iscale[j] * (xt[i, j] - best_start[j]), _ZERO, top)
                codes[row, i] = _ZERO if flat[j] else level
            scales[row] = _ZERO if flat[j] else scale[j]
            the_mins[row] = -flat_min[j] if flat[j] else -low[j]


@_compiled(inline="always")
def _signed_peaks(x: np.ndarray, weights: np.ndarray, own_weights: bool, first: int,
                  count: int, xt: np.ndarray, wt: np.ndarray, peak: np.ndarray,
                  amax: np.ndarray) -> None:
    """make_qx_quants' and make_q3_quants' start for the tile of sub-blocks from `first`:
    x and its weights (weights[r], or x*x with `own_weights`) transposed into xt and wt
    [size, LANES], lanes past `count` repeating the last sub-block; then each lane's largest
    |x| (amax) and that x with its sign (peak), the first one met on ties, as the C's
    `fabsf(x) > amax` picks it."""
    size = x.shape[1]
    for j in range(LANES):
        row = first + min(j, count - 1)
        for i in range(size):
            xt[i, j] = x[row, i]
            wt[i, j] = x[row, i] * x[row, i] if own_weights else weights[row, i]
    for j in range(LANES):
        peak[j] = _ZERO
        amax[j] = _ZERO
    for i in range(size):
        for j in range(LANES):
            ax = abs(xt[i, j])
            bigger = ax > amax[j]
            amax[j] = ax if bigger else amax[j]
            peak[j] = xt[i, j] if bigger else peak[j]


@_compiled(inline="always")
def _qx_sums(iscale: np.ndarray, xt: np.ndarray, wt: np.ndarray, bottom: np.float32,
             ceiling: np.float32, sum_lx: np.ndarray, sum_l2: np.ndarray) -> None:
    """One try of make_qx_quants for every lane: sum_lx = sum(w*x*L), sum_l2 = sum(w*L*L)
    with L = nearest_int(iscale*x) clamped to [bottom, ceiling], added in the C's order."""
    size, lanes = xt.shape
    for j in range(lanes):
        sum_lx[j] = _ZERO
        sum_l2[j] = _ZERO
    for i in range(size):
        for j in range(lanes):
            level = _level(iscale[j] * xt[i, j], bottom, ceiling)
            sum_lx[j] += wt[i, j] * xt[i, j] * level
            sum_l2[j] += wt[i, j] * level * level


@_compiled()
def qx(x: np.ndarray, weights: np.ndarray, own_weights: bool, nmax: int,
       scales: np.ndarray, codes: np.ndarray) -> None:
    """make_qx_quants(size, nmax, x[r], L, rmse_type=1, qw) for every row r of x [n, size]:
    qw = weights[r], or NULL (w = x*x) with `own_weights`. Writes scales [n] and codes
    [n, size] (float codes 0..2*nmax-1, L as the C stores it)."""
    n, size = x.shape
    xt = np.zeros((size, LANES), f32)
    wt = np.zeros((size, LANES), f32)
    peak = np.empty(LANES, f32)
    amax = np.empty(LANES, f32)
    iscale = np.empty(LANES, f32)
    chosen = np.empty(LANES, f32)
    sum_lx = np.empty(LANES, f32)
    sum_l2 = np.empty(LANES, f32)
    scale = np.empty(LANES, f32)
    best = np.empty(LANES, f32)
    top = f32(nmax)
    bottom, ceiling = f32(-nmax), f32(nmax - 1)
    for first in range(0, n, LANES):
        count = min(LANES, n - first)
        _signed_peaks(x, weights, own_weights, first, count, xt, wt, peak, amax)
        for j in range(LANES):
            iscale[j] = -top / peak[j]
            chosen[j] = iscale[j]
        _qx_sums(iscale, xt, wt, bottom, ceiling, sum_lx, sum_l2)
        for j in range(LANES):
            scale[j] = sum_lx[j] / sum_l2[j] if sum_l2[j] != 0 else _ZERO
            best[j] = scale[j] * sum_lx[j]
        for step in range(-9, 10):
            if step == 0:
                continue
            numerator = -(top + _TENTH * f32(step))
            for j in range(LANES):
                iscale[j] = numerator / peak[j]
            _qx_sums(iscale, xt, wt, bottom, ceiling, sum_lx, sum_l2)
            for j in range(LANES):
                better = sum_l2[j] > 0 and sum_lx[j] * sum_lx[j] > best[j] * sum_l2[j]
                ratio = sum_lx[j] / sum_l2[j]
                scale[j] = ratio if better else scale[j]
                best[j] = ratio * sum_lx[j] if better else best[j]
                chosen[j] = iscale[j] if better else chosen[j]
        for j in range(count):
            row = first + j
            zero = amax[j] < _GROUP_MAX_EPS  # all zero: the C returns 0 with L = 0
            # The C keeps L of the winning try; recomputing it from that iscale gives the same.
            for i in range(size):
                level = _level(chosen[j] * xt[i, j], bottom, ceiling)
                codes[row, i] = _ZERO if zero else level + top
            scales[row] = _ZERO if zero else scale[j]


@_compiled()
def requantize(x: np.ndarray, search_codes: np.ndarray, d: np.ndarray, dm: np.ndarray,
               low: int, high: int, offset: int, codes: np.ndarray) -> None:
    """The K-quants' last pass over each sub-block r of x [m, size] with its rounded scale
    d[r] and min dm[r]: `if (!d) continue;` (keep search_codes[r]) else
    L = MAX(low, MIN(high, nearest_int((x + dm) / d))) + offset, into codes [m, size]."""
    m, size = x.shape
    bottom, ceiling, base = f32(low), f32(high), f32(offset)
    for r in range(m):
        scale = d[r]
        shift = dm[r]
        if scale == 0:
            for i in range(size):
                codes[r, i] = search_codes[r, i]
            continue
        for i in range(size):
            codes[r, i] = _level((x[r, i] + shift) / scale, bottom, ceiling) + base


@_compiled()
def q3(x: np.ndarray, nmax: int, scales: np.ndarray, codes: np.ndarray) -> None:
    """make_q3_quants(size, nmax, x[r], L, do_rmse=true) for every row r of x [n, size] (w =
    x*x): scales [n] and codes [n, size] (float codes 0..2*nmax-1; 0 for an all-zero row).
    The C stops refining a row after a pass that changes nothing; here every lane runs all
    five passes, and a pass after one that changed nothing changes nothing either."""
    n, size = x.shape
    xt = np.zeros((size, LANES), f32)
    wt = np.zeros((size, LANES), f32)
    levels = np.empty((size, LANES), f32)
    peak = np.empty(LANES, f32)
    amax = np.empty(LANES, f32)
    iscale = np.empty(LANES, f32)
    sum_lx = np.empty(LANES, f32)
    sum_l2 = np.empty(LANES, f32)
    top = f32(nmax)
    bottom, ceiling = f32(-nmax), f32(nmax - 1)
    for first in range(0, n, LANES):
        count = min(LANES, n - first)
        _signed_peaks(x, x, True, first, count, xt, wt, peak, amax)
        for j in range(LANES):
            iscale[j] = -top / peak[j]
        _qx_sums(iscale, xt, wt, bottom, ceiling, sum_lx, sum_l2)
        for i in range(size):
            for j in range(LANES):
                levels[i, j] = _level(iscale[j] * xt[i, j], bottom, ceiling)
        for _ in range(5):
            for i in range(size):
                for j in range(LANES):
                    w = wt[i, j]
                    v = xt[i, j]
                    old = levels[i, j]
                    slx = sum_lx[j] - w * v * old
                    sl2 = sum_l2[j] - w * old * old
                    new = _level(v * sl2 / slx, bottom, ceiling)
                    slx_new = slx + w * v * new
                    sl2_new = sl2 + w * new * new
                    take = (slx > 0 and new != old and sl2_new > 0
                            and slx_new * slx_new * sum_l2[j] > sum_lx[j] * sum_lx[j] * sl2_new)
                    levels[i, j] = new if take else old
                    sum_lx[j] = slx_new if take else sum_lx[j]
                    sum_l2[j] = sl2_new if take else sum_l2[j]
        for j in range(count):
            row = first + j
            zero = amax[j] < _GROUP_MAX_EPS
            for i in range(size):
                codes[row, i] = _ZERO if zero else levels[i, j] + top
            scale = sum_lx[j] / sum_l2[j] if sum_l2[j] > 0 else _ZERO
            scales[row] = _ZERO if zero else scale
