"""ggml's K-quant scale searches compiled for the CPU (numba): make_qkx2_quants (which is also
make_qkx3_quants with weights) and make_qx_quants, one sub-block after another, each written
as the C's loops.

Bit-exactness rests on compiling the C's own sequence of float32 operations: every constant
and every int-to-float conversion is an explicit np.float32 (numba would otherwise widen a
float32 expression to float64), nothing is compiled with fastmath (no reassociation, no fused
multiply-add), sums run element by element from the C's start values, and nearest_int() is the
C's bit trick. The kernels release the GIL, so the converter's worker threads quantize on all
cores at once; compiled code is cached on disk (`cache=True`), so only the first run on a
machine pays the compile.
"""

from __future__ import annotations

import numpy as np
from numba import njit

f32 = np.float32
_MAGIC = f32(12582912.0)  # 1.5 * 2**23: nearest_int()'s rounding constant
_GROUP_MAX_EPS = f32(1e-15)
_ZERO = f32(0.0)
_ONE = f32(1.0)
_TENTH = f32(0.1)
# Division by zero gives inf or NaN as in C instead of raising.
_JIT = dict(nogil=True, cache=True, error_model="numpy")


@njit(inline="always", **_JIT)
def _nearest_int(value: np.float32, scratch: np.ndarray, bits: np.ndarray) -> int:
    """nearest_int(): add 1.5 * 2**23 in float32 and read the low mantissa bits (`bits` is
    `scratch` viewed as int32), which gives the C's integer for any input, NaN included."""
    scratch[0] = value + _MAGIC
    return (bits[0] & 0x7FFFFF) - 0x400000


@njit(**_JIT)
def qkx2(x: np.ndarray, weights: np.ndarray, own_weights: bool, nmax: int,
         numerators: np.ndarray, use_mad: bool, scales: np.ndarray, the_mins: np.ndarray,
         codes: np.ndarray) -> None:
    """make_qkx2_quants(size, nmax, x[r], weights[r], L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad) for every row r of x [n, size]; numerators[k] is `rmin + rdelta*k + nmax` as the C
    rounds it. `own_weights` makes Q4_K's and Q5_K's weights instead (av_x + fabsf(x), av_x =
    sqrtf(sum of x² / size)) and leaves `weights` unread. Writes scales [n], the_mins [n] and
    codes [n, size] (float codes 0..nmax)."""
    n, size = x.shape
    w = np.empty(size, f32)
    best_codes = np.empty(size, f32)
    trial = np.empty(size, f32)
    scratch = np.empty(1, f32)
    bits = scratch.view(np.int32)
    top = f32(nmax)
    for r in range(n):
        xr = x[r]
        if own_weights:
            sum_x2 = _ZERO
            for i in range(size):
                sum_x2 += xr[i] * xr[i]
            # sqrtf: the float64 root of a float32 rounds to the correctly rounded float32 one.
            av_x = f32(np.sqrt(np.float64(sum_x2 / f32(size))))
            for i in range(size):
                w[i] = av_x + abs(xr[i])
        else:
            for i in range(size):
                w[i] = weights[r, i]
        low = xr[0]
        high = xr[0]
        sum_w = w[0]
        sum_x = sum_w * xr[0]
        for i in range(1, size):
            if xr[i] < low:
                low = xr[i]
            if xr[i] > high:
                high = xr[i]
            sum_w += w[i]
            sum_x += w[i] * xr[i]
        if low > 0:
            low = _ZERO
        # make_qkx3_quants tests `max <= min`: the same, as min never exceeds max here.
        if high == low:
            for i in range(size):
                codes[r, i] = _ZERO
            the_mins[r] = -low
            scales[r] = _ZERO
            continue
        iscale = top / (high - low)
        scale = _ONE / iscale
        best_error = _ZERO
        for i in range(size):
            level = max(0, min(nmax, _nearest_int(iscale * (xr[i] - low), scratch, bits)))
            best_codes[i] = f32(level)
            diff = scale * best_codes[i] + low - xr[i]
            diff = abs(diff) if use_mad else diff * diff
            best_error += w[i] * diff
        for step in range(numerators.shape[0]):
            iscale = numerators[step] / (high - low)
            sum_l = _ZERO
            sum_l2 = _ZERO
            sum_xl = _ZERO
            for i in range(size):
                level = max(0, min(nmax, _nearest_int(iscale * (xr[i] - low), scratch, bits)))
                trial[i] = f32(level)
                wl = w[i] * trial[i]
                sum_l += wl
                sum_l2 += wl * trial[i]
                sum_xl += wl * xr[i]
            det = sum_w * sum_l2 - sum_l * sum_l
            if det > 0:
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
                if this_min > 0:
                    this_min = _ZERO
                    this_scale = sum_xl / sum_l2
                error = _ZERO
                for i in range(size):
                    diff = this_scale * trial[i] + this_min - xr[i]
                    diff = abs(diff) if use_mad else diff * diff
                    error += w[i] * diff
                if error < best_error:
                    best_codes[:] = trial
                    best_error = error
                    scale = this_scale
                    low = this_min
        for i in range(size):
            codes[r, i] = best_codes[i]
        the_mins[r] = -low
        scales[r] = scale


@njit(**_JIT)
def qx(x: np.ndarray, weights: np.ndarray, own_weights: bool, nmax: int,
       scales: np.ndarray, codes: np.ndarray) -> None:
    """make_qx_quants(size, nmax, x[r], L, rmse_type=1, qw) for every row r of x [n, size]:
    qw = weights[r], or NULL (w = x*x) with `own_weights`. Writes scales [n] and codes
    [n, size] (float codes 0..2*nmax-1, L as the C stores it)."""
    n, size = x.shape
    w = np.empty(size, f32)
    scratch = np.empty(1, f32)
    bits = scratch.view(np.int32)
    top = f32(nmax)
    for r in range(n):
        xr = x[r]
        peak = _ZERO
        amax = _ZERO
        for i in range(size):
            ax = abs(xr[i])
            if ax > amax:
                amax = ax
                peak = xr[i]
        if amax < _GROUP_MAX_EPS:
            for i in range(size):
                codes[r, i] = _ZERO
            scales[r] = _ZERO
            continue
        for i in range(size):
            w[i] = xr[i] * xr[i] if own_weights else weights[r, i]
        iscale = -top / peak
        sum_lx = _ZERO
        sum_l2 = _ZERO
        for i in range(size):
            level = max(-nmax, min(nmax - 1, _nearest_int(iscale * xr[i], scratch, bits)))
            codes[r, i] = f32(level + nmax)
            fl = f32(level)
            sum_lx += w[i] * xr[i] * fl
            sum_l2 += w[i] * fl * fl
        scale = sum_lx / sum_l2 if sum_l2 != 0 else _ZERO
        best = scale * sum_lx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(top + _TENTH * f32(step)) / peak
            sum_lx = _ZERO
            sum_l2 = _ZERO
            for i in range(size):
                fl = f32(max(-nmax, min(nmax - 1, _nearest_int(iscale * xr[i], scratch, bits))))
                sum_lx += w[i] * xr[i] * fl
                sum_l2 += w[i] * fl * fl
            if sum_l2 > 0 and sum_lx * sum_lx > best * sum_l2:
                for i in range(size):
                    level = max(-nmax, min(nmax - 1, _nearest_int(iscale * xr[i], scratch,
                                                                  bits)))
                    codes[r, i] = f32(level + nmax)
                scale = sum_lx / sum_l2
                best = scale * sum_lx
        scales[r] = scale
