"""ggml's weighted scale searches (make_qx_quants, make_qkx3_quants, make_qp_quants), vectorised
over groups: each function takes groups [N, n] and per-element weights [N, n] and returns what
the C returns for every group at once.

Bit-exact with ggml-quants.c: float32 throughout, every product and sum in the C's order (sums
accumulated element by element, never pairwise), nearest_int()'s rounding trick, the first
winner on ties, and the same sequential dependencies (make_qkx3_quants' tries read the minimum
the previous winning try left; make_qp_quants' refinement visits elements in order and stops a
group after a pass that changes nothing).
"""

from __future__ import annotations

import torch

from app.core.quant import kquant_search_cpu
from app.core.quant.kquant_search import nearest_int, sequential_sum
from app.core.quant.legacy import first_min

GROUP_MAX_EPS = 1e-15


def ordered_sum(values: torch.Tensor) -> torch.Tensor:
    """sum over the last dimension as `float s = 0; for (...) s += v[i];` does it."""
    return sequential_sum(values.movedim(-1, 0), from_zero=True)


def _first_of_largest_magnitude(x: torch.Tensor) -> torch.Tensor:
    """`if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`: the signed value of the
    first element of largest magnitude, +0.0 for an all-zero group; never NaN (which argmax
    would pick), as no comparison with NaN is true. [N, n] → [N]."""
    magnitude = x.abs().nan_to_num_(nan=0.0)
    index = magnitude.argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    peak = x.gather(1, index).squeeze(1)
    return torch.where(magnitude.amax(dim=1) > 0, peak, 0.0)


def make_qx_quants(x: torch.Tensor, weights: torch.Tensor,
                   nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=weights) → (scale [N], L [N, n] as float
    codes 0..2*nmax-1; 0 for an all-zero group)."""
    if kquant_search_cpu.handles(x, weights):
        return kquant_search_cpu.make_qx_quants(x, weights, nmax)
    peak = _first_of_largest_magnitude(x)
    zero = peak.abs() < GROUP_MAX_EPS
    steps = torch.tensor([0] + [s for s in range(-9, 10) if s], dtype=torch.float32,
                         device=x.device)
    tenth = torch.tensor(0.1, dtype=torch.float32, device=x.device)
    # The first try is -nmax / max, then -(nmax + 0.1f * is) / max; step 0 gives nmax exactly.
    iscales = (-(nmax + tenth * steps)).unsqueeze(1) / torch.where(zero, 1.0, peak).unsqueeze(0)
    xt, wt = x.t().contiguous(), weights.t().contiguous()  # [n, N]
    wx = wt * xt
    sum_lx = torch.zeros_like(iscales)  # [19, N]
    sum_l2 = torch.zeros_like(iscales)
    for i in range(xt.shape[0]):
        levels = nearest_int(iscales * xt[i]).clamp_(-nmax, nmax - 1)
        sum_lx.add_(wx[i] * levels)  # (w * x) * l
        sum_l2.add_((wt[i] * levels).mul_(levels))  # (w * l) * l
    scale = torch.where(sum_l2[0] != 0, sum_lx[0] / sum_l2[0], 0.0)
    best = scale * sum_lx[0]
    chosen = iscales[0]
    for k in range(1, steps.numel()):
        lx, l2 = sum_lx[k], sum_l2[k]
        better = (l2 > 0) & (lx * lx > best * l2)
        scale = torch.where(better, lx / l2, scale)
        best = torch.where(better, scale * lx, best)
        chosen = torch.where(better, iscales[k], chosen)
    # The C keeps L of the winning try; recomputing it with that iscale gives the same codes.
    codes = nearest_int(chosen.unsqueeze(1) * x).clamp_(-nmax, nmax - 1) + nmax
    return (torch.where(zero, 0.0, scale),
            torch.where(zero.unsqueeze(1), 0.0, codes))


def _column_sum(values: torch.Tensor) -> torch.Tensor:
    """ordered_sum for values already laid out [n, N] (element i of every group in row i)."""
    return sequential_sum(values, from_zero=True)


def make_qkx3_quants(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float,
                     rdelta: float, nstep: int) -> tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
    """make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad=false) → (scale [N], the_min [N], L [N, n] as float codes 0..nmax), on the device
    of x: CPU tensors go through the compiled search (kquant_search_cpu), others through
    make_qkx3_quants_torch."""
    if kquant_search_cpu.handles(x, weights):
        # With weights, the C of make_qkx3_quants is make_qkx2_quants'.
        return kquant_search_cpu.make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, False)
    return make_qkx3_quants_torch(x, weights, nmax, rmin, rdelta, nstep)


def make_qkx3_quants_torch(x: torch.Tensor, weights: torch.Tensor, nmax: int, rmin: float,
                           rdelta: float, nstep: int,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """make_qkx3_quants in torch, on any device: (scale [N], the_min [N], L [N, n] as float
    codes 0..nmax).

    Works on the groups transposed ([n, N]: element i of every group contiguous), so the
    element-by-element sums need no copies; the levels use nearest_int's bit trick, which
    differs from rounding where a denormal span makes iscale inf.
    """
    device = x.device
    low = first_min(x)
    high = x.amax(dim=1)
    low = torch.where(low > 0, 0.0, low)
    flat = high <= low  # L = 0, the_min = -min, scale 0
    xt, wt = x.t().contiguous(), weights.t().contiguous()  # [n, N]
    sum_w = _column_sum(wt)
    # sum_x starts as weights[0] * x[0]: the same as adding that product to 0.
    sum_x = _column_sum(wt * xt)
    f32 = torch.float32
    nmax_f = torch.tensor(float(nmax), dtype=f32, device=device)

    def levels_for(iscale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
        return nearest_int(torch.sub(xt, minimum).mul_(iscale)).clamp_(0, nmax)

    def weighted_error(scale: torch.Tensor, minimum: torch.Tensor,
                       levels: torch.Tensor) -> torch.Tensor:
        diff = torch.mul(levels, scale).add_(minimum).sub_(xt)  # scale * L + min - x
        return _column_sum(diff.mul_(diff).mul_(wt))  # w * (diff * diff)

    iscale = nmax_f / torch.where(flat, 1.0, high - low)
    scale = 1 / iscale
    codes = levels_for(iscale, low)
    best = weighted_error(scale, low, codes)
    minimum = low
    tries = (torch.tensor(rmin, dtype=f32, device=device)
             + torch.tensor(rdelta, dtype=f32, device=device)
             * torch.arange(nstep + 1, dtype=f32, device=device) + nmax_f)
    for k in range(nstep + 1):
        # Each try divides by max - min with the minimum the last winning try left.
        iscale = tries[k] / torch.where(flat, 1.0, high - minimum)
        trial = levels_for(iscale, minimum)
        wl = wt * trial
        sum_l = _column_sum(wl)
        sum_xl = _column_sum(torch.mul(wl, xt))
        sum_l2 = _column_sum(wl.mul_(trial))
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clipped = this_min > 0
        this_min = torch.where(clipped, 0.0, this_min)
        this_scale = torch.where(clipped, sum_xl / sum_l2, this_scale)
        error = weighted_error(this_scale, this_min, trial)
        better = (det > 0) & (error < best) & ~flat
        best = torch.where(better, error, best)
        scale = torch.where(better, this_scale, scale)
        minimum = torch.where(better, this_min, minimum)
        codes = torch.where(better, trial, codes)
    scale = torch.where(flat, 0.0, scale)
    codes = torch.where(flat, 0.0, codes)
    return scale, -minimum, codes.t()


def _wrap_u8(values: torch.Tensor) -> torch.Tensor:
    """An int stored into a uint8_t, kept as float32 (negative codes wrap as in the C)."""
    return torch.remainder(values, 256.0)


def make_qp_quants(x: torch.Tensor, weights: torch.Tensor,
                   nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qp_quants(n, nmax, x, L, quant_weights=weights) → (scale [N], L [N, n] as float
    values of the uint8_t codes)."""
    device = x.device
    top = x.amax(dim=1).clamp(min=0.0)
    zero = top < GROUP_MAX_EPS
    top = torch.where(zero, 1.0, top)
    f32 = torch.float32
    nmax_f = torch.tensor(float(nmax), dtype=f32, device=device)
    iscale = nmax_f / top
    codes = _wrap_u8(nearest_int(iscale.unsqueeze(1) * x))
    scale = 1 / iscale
    diff = x - scale.unsqueeze(1) * codes
    best = ordered_sum((weights * diff) * diff)
    tenth = torch.tensor(0.1, dtype=f32, device=device)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (tenth * step + nmax_f) / top
        scale_is = 1 / iscale_is
        levels = nearest_int(iscale_is.unsqueeze(1) * x).clamp_(max=nmax)
        diff = x - scale_is.unsqueeze(1) * levels
        error = ordered_sum((weights * diff) * diff)
        better = error < best
        best = torch.where(better, error, best)
        iscale = torch.where(better, iscale_is, iscale)
    levels = nearest_int(iscale.unsqueeze(1) * x).clamp_(max=nmax)
    codes = _wrap_u8(levels)
    wx = weights * x
    sum_lx = ordered_sum(wx * levels)
    sum_l2 = ordered_sum((weights * levels) * levels)
    active = ~zero
    wt, xt, wxt = weights.t(), x.t(), wx.t()
    for _ in range(5):
        changed = torch.zeros_like(active)
        for i in range(x.shape[1]):
            w, xi, wxi, current = wt[i], xt[i], wxt[i], codes[:, i]
            slx = sum_lx - wxi * current
            sl2 = sum_l2 - (w * current) * current
            new = nearest_int(xi * sl2 / slx).clamp_(max=nmax)
            slx_new = slx + wxi * new
            sl2_new = sl2 + (w * new) * new
            take = (active & (slx > 0) & (sl2 > 0) & (new != current)
                    & (slx_new * slx_new * sum_l2 > sum_lx * sum_lx * sl2_new))
            codes[:, i] = torch.where(take, _wrap_u8(new), current)
            sum_lx = torch.where(take, slx_new, sum_lx)
            sum_l2 = torch.where(take, sl2_new, sum_l2)
            changed |= take
        active &= changed
        if not bool(active.any()):
            break
    scale = torch.where(sum_l2 > 0, sum_lx / sum_l2, 0.0)
    return (torch.where(zero, 0.0, scale),
            torch.where(zero.unsqueeze(1), 0.0, codes))
