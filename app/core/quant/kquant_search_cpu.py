"""The K-quant scale searches for CPU tensors, in NumPy: make_qkx2_quants (and with it
make_qkx3_quants) and make_qx_quants' sums and choice. The same float32 operations in the same
order as the torch versions in kquant_search, kquants and weighted_search (and as
ggml-quants.c), for less time per operation.

A search is a few hundred whole-array operations per group of sub-blocks. NumPy runs each
with a fraction of torch's fixed cost per call, and in-order sums as one call instead of one
per position; together that halves the CPU time of Q4_K (measured against the torch
version), and leaves fewer GIL hand-overs between the converter's worker threads. Torch and
NumPy round every float32 operation the same way (IEEE, no fused multiply-add), and NumPy's
sum along an axis that is not the innermost adds position by position, as the C's loops do.
"""

from __future__ import annotations

import numpy as np
import torch

f32 = np.float32
# Whether CPU tensors take these searches. The torch versions give the same results on every
# device; tests turn this off to check them on the CPU.
ENABLED = True
# Sub-blocks searched together. Fewer, larger groups mean fewer NumPy calls, and every call
# hands the GIL to the converter's other worker thread and takes it back: measured with two
# threads on two cores, 8192 sub-blocks of 32 quantize 1 Mi elements in 0.08 s of wall time
# where 1024 (whose arrays fit a core's L2 cache, 25% faster on one thread) took 0.14 s.
LANES = 8192
_NEG_ZERO = f32(-0.0)  # the start of every sum: -0.0 + v is v for every v, -0.0 and +0.0 too
_MAGIC = f32(12582912.0)  # 1.5 * 2**23
# Below this magnitude rint() is nearest_int(): v + 1.5 * 2**23 lands where the ulp is 1.
_RINT_EXACT = f32(4194304.0)


def nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's nearest_int() of float32 `values`, in place, as float32: add 1.5 * 2**23 and read
    the low 23 bits minus 2**22. For |v| < 2**22 that is rint(); beyond it (a scale of inf from
    1/denormal, inf * 0 = NaN, an overflowed product) the C's bit pattern gives other codes
    (-2**22 for inf, 0 for NaN), which this reproduces."""
    np.add(values, _MAGIC, out=values)
    # NaN reads as 0, as the C's payload-free NaNs do (see kquant_search.nearest_int).
    np.copyto(values, _MAGIC, where=np.isnan(values))
    bits = values.view(np.int32)
    np.bitwise_and(bits, 0x7FFFFF, out=bits)
    np.subtract(bits, 0x400000, out=bits)
    np.copyto(values, bits, casting="unsafe")  # |bits| <= 2**22: exact in float32
    return values


def handles(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether these searches take sub-blocks `x` [n, size] (and the tensors that go with
    them): float32 on the CPU, at least two sub-blocks (NumPy would add a lone row's sums
    pairwise), and ENABLED."""
    return (ENABLED and x.shape[0] >= 2
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *others)))


def make_qkx2_quants(x: torch.Tensor, weights: torch.Tensor | None, nmax: int, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool, *,
                     low: torch.Tensor | None = None, from_zero: bool = False,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kquant_search.make_qkx2_quants for CPU float32 tensors of at least two sub-blocks:
    (scale [n], the_min [n], L [n, size] as float codes 0..nmax).

    `weights` None stands for Q4_K's and Q5_K's own, av_x + |x| with av_x = sqrtf(sum of x²
    from 0.0f / 32) per sub-block, made here from the transposed copy the search holds anyway.
    make_qkx3_quants is the same search: `low` [n] is its starting min (already <= 0, with
    the sign of zero it must keep; else min(x, 0)), and `from_zero` starts every sum from
    0.0f instead of from its first term.
    """
    values = x.detach().numpy()
    importance = None if weights is None else weights.detach().numpy()
    lows = None if low is None else low.detach().numpy()
    n, size = values.shape
    scale = np.empty(n, f32)
    the_min = np.empty(n, f32)
    codes = np.empty((n, size), f32)
    numerators = [f32(rmin) + f32(rdelta) * f32(step) + f32(nmax) for step in range(nstep + 1)]
    # Groups of equal size: none of one sub-block, whose sums NumPy would add pairwise.
    groups = -(-n // LANES)
    bounds = [n * i // groups for i in range(groups + 1)]
    # One set of working arrays per group size (there are at most two), each exactly the
    # group's size: NumPy runs its fast loops on whole contiguous arrays only.
    searches: dict[int, _Search] = {}
    start_value = f32(0.0) if from_zero else _NEG_ZERO
    # The C's divisions by zero, overflows and NaN are silent, and so are these.
    with np.errstate(all="ignore"):
        for start, stop in zip(bounds, bounds[1:], strict=False):
            search = searches.get(stop - start)
            if search is None:
                search = _Search(size, stop - start, nmax, numerators, use_mad, start_value)
                searches[stop - start] = search
            search.run(values[start:stop],
                       None if importance is None else importance[start:stop],
                       None if lows is None else lows[start:stop], scale[start:stop],
                       the_min[start:stop], codes[start:stop])
    return torch.from_numpy(scale), torch.from_numpy(the_min), torch.from_numpy(codes)


class _Search:
    """The working arrays of one group of sub-blocks, reused from group to group."""

    def __init__(self, size: int, lanes: int, nmax: int, numerators: list[np.float32],
                 use_mad: bool, start: np.float32) -> None:
        self.nmax, self.numerators, self.use_mad = nmax, numerators, use_mad
        self.start = start  # every sum's first value
        # The try's codes and x, then two planes of products: w*l (summed, then turned into
        # (w*l)*x in place) and (w*l)*l; the first holds the error terms once the sums are
        # taken. And the weights.
        self.planes = np.empty((4, size, lanes), f32)
        self.wt = np.empty((size, lanes), f32)
        tries = len(numerators) + 1  # slot 0: the first guess; slot k + 1: try k
        self.iscales = np.empty((tries, lanes), f32)
        self.starts = np.empty((tries, lanes), f32)  # the min each try started from
        self.scales = np.empty((tries, lanes), f32)
        self.sums = np.empty((4, lanes), f32)  # sum_l, sum_xl, sum_l2, sum_x

    def run(self, x: np.ndarray, weights: np.ndarray | None, low: np.ndarray | None,
            scale_out: np.ndarray, min_out: np.ndarray, codes_out: np.ndarray) -> None:
        m = x.shape[0]  # the lanes the arrays were made for
        planes = self.planes
        trial, xt, products, terms = planes[0], planes[1], planes[2:4], planes[2]
        wt = self.wt
        iscales, starts, scales, sums = self.iscales, self.starts, self.scales, self.sums
        np.copyto(xt, x.T)
        if weights is None:
            # sum_x2 from 0.0f, av_x = sqrtf(sum_x2 / 32) (NumPy's float32 root is correctly
            # rounded, as sqrtf is), weights[l] = av_x + fabsf(x[l]).
            sum_x2 = np.add.reduce(np.multiply(xt, xt, out=terms), axis=0, initial=f32(0.0))
            av_x = np.sqrt(sum_x2 / f32(xt.shape[0]))
            np.add(np.abs(xt, out=wt), av_x, out=wt)
        else:
            np.copyto(wt, weights.T)
        if low is None:
            minimum = np.minimum(xt.min(axis=0), f32(0.0))  # `if (min > 0) min = 0`
        else:
            minimum = low.copy()
        high = xt.max(axis=0)
        # Each lane's extreme values: every level lies between the levels of these two.
        self.ends = np.stack([high, xt.min(axis=0)])
        flat = high == minimum
        # A flat sub-block (the C returns early) gets a made-up finite span instead of 0: its
        # codes are all 0, so no try has D > 0 and nothing changes; its result is replaced.
        high = np.where(flat, f32(1.0) - minimum, high)
        sum_w = np.add.reduce(wt, axis=0, initial=self.start)
        np.add.reduce(np.multiply(wt, xt, out=terms), axis=0, out=sums[3], initial=self.start)
        first = np.stack([sum_w, sum_w, sums[3]])
        starts[0] = minimum
        np.divide(f32(self.nmax), high - minimum, out=iscales[0])
        np.divide(f32(1.0), iscales[0], out=scales[0])
        self._levels(trial, xt, minimum, iscales[0])
        best_error = self._error(terms, scales[0], trial, minimum, xt, wt)
        chosen = np.zeros(m, np.intp)
        better = np.empty(m, bool)
        # Masked copies are the cheap select here (np.where allocates and is slower).
        for step, numerator in enumerate(self.numerators):
            # A better try replaces `min`, and the next tries start from the new one.
            iscale = np.divide(numerator, high - minimum, out=iscales[step + 1])
            starts[step + 1] = minimum
            self._levels(trial, xt, minimum, iscale)
            wl = np.multiply(wt, trial, out=products[0])
            np.add.reduce(wl, axis=0, out=sums[0], initial=self.start)  # sum_l
            np.multiply(wl, trial, out=products[1])  # (w*l)*l
            np.multiply(wl, xt, out=wl)  # (w*l)*x
            np.add.reduce(products, axis=1, out=sums[1:3], initial=self.start)
            # [D, scale * D, min * D]: sum_w*sum_l2 - sum_l*sum_l,
            # sum_w*sum_xl - sum_x*sum_l, sum_x*sum_l2 - sum_l*sum_xl.
            numer = first * sums[[2, 1, 2]]
            numer -= sums[0] * sums[[0, 3, 1]]
            det = numer[0]
            try_scale = np.divide(numer[1], det, out=scales[step + 1])
            try_min = np.divide(numer[2], det)
            clipped = try_min > 0
            np.copyto(try_scale, sums[1] / sums[2], where=clipped)
            np.copyto(try_min, f32(0.0), where=clipped)
            try_error = self._error(terms, try_scale, trial, try_min, xt, wt)
            np.less(try_error, best_error, out=better)
            better &= det > 0
            np.copyto(best_error, try_error, where=better)
            np.copyto(chosen, step + 1, where=better)
            np.copyto(minimum, try_min, where=better)
        lanes = np.arange(m)
        # The C keeps the codes of the winning try; recomputing them from its iscale and the
        # min it started from gives the same codes.
        self._levels(trial, xt, starts[chosen, lanes], iscales[chosen, lanes])
        # The C's codes are uint8: never the -0.0 that rint() gives a small negative.
        np.add(trial, f32(0.0), out=trial)
        np.copyto(scale_out, np.where(flat, f32(0.0), scales[chosen, lanes]))
        np.negative(minimum, out=min_out)
        np.copyto(codes_out, np.where(flat, f32(0.0), trial).T)

    def _levels(self, out: np.ndarray, xt: np.ndarray, low: np.ndarray,
                iscale: np.ndarray) -> None:
        """MAX(0, MIN(nmax, nearest_int(iscale * (x - min)))). rint where every product is
        within 2**22 (always, but for denormal spans, overflow or NaN); nearest_int's bit
        trick otherwise. The products are monotonic in x, so each lane's largest and smallest
        x bound them."""
        np.subtract(xt, low, out=out)
        np.multiply(out, iscale, out=out)
        bounds = np.abs((self.ends - low) * iscale)
        if (bounds < _RINT_EXACT).all():  # NaN compares False: bit trick
            np.rint(out, out=out)
        else:
            nearest_int(out)
        np.clip(out, 0, self.nmax, out=out)

    def _error(self, out: np.ndarray, scale: np.ndarray, codes: np.ndarray, minimum: np.ndarray,
               xt: np.ndarray, wt: np.ndarray) -> np.ndarray:
        """sum over positions, in order, of w * |scale*L + min - x| (or its square)."""
        np.multiply(codes, scale, out=out)
        np.add(out, minimum, out=out)
        np.subtract(out, xt, out=out)
        if self.use_mad:
            np.abs(out, out=out)
        else:
            np.multiply(out, out, out=out)
        np.multiply(out, wt, out=out)
        return np.add.reduce(out, axis=0, initial=self.start)


# Sub-blocks per group in qx_sums (measured with two worker threads as LANES: 2048 beat 512,
# whose planes stay in the L2 cache, and 8192).
QX_LANES = 2048
_POS_ZERO = f32(0.0)  # make_qx_quants' sums start from 0.0f


def qx_sums(iscales: torch.Tensor, x: torch.Tensor,
            weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants' sums for every try at once, on the CPU: for iscales [tries, n] and
    sub-blocks x [n, size] with weights [n, size] (at least two sub-blocks), (sumlx, suml2)
    [tries, n] with l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x))) and, element by
    element in order from 0.0f, sumlx += (w * x) * l and suml2 += (w * l) * l. nmax is 32."""
    scales = iscales.detach().numpy()
    values = x.detach().numpy()
    importance = weights.detach().numpy()
    tries, n = scales.shape
    sums = np.empty((2, tries, n), f32)
    groups = -(-n // QX_LANES)
    bounds = [n * i // groups for i in range(groups + 1)]
    with np.errstate(all="ignore"):
        for start, stop in zip(bounds, bounds[1:], strict=False):
            xt = np.ascontiguousarray(values[start:stop].T)
            wt = np.ascontiguousarray(importance[start:stop].T)
            level = np.multiply(scales[:, None, start:stop], xt[None])  # [tries, size, m]
            np.rint(level, out=level)  # nearest_int within its range
            np.clip(level, -32, 31, out=level)
            products = np.empty((2, *level.shape), f32)
            np.multiply(np.multiply(wt, xt), level, out=products[0])
            np.multiply(wt, level, out=products[1])
            np.multiply(products[1], level, out=products[1])
            np.add.reduce(products, axis=2, out=sums[:, :, start:stop], initial=_POS_ZERO)
    return torch.from_numpy(sums[0]), torch.from_numpy(sums[1])


def qx_choose(iscales: torch.Tensor, sum_lx: torch.Tensor,
              sum_l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants' choice among its tries, on the CPU: try 0 first, then each later try
    that has suml2 > 0 and sumlx*sumlx > best*suml2 (best = scale*sumlx of the last taken).
    Returns (scale [n], the chosen try's iscale [n]); all [tries, n] inputs are float32."""
    scales, lx, l2 = iscales.numpy(), sum_lx.numpy(), sum_l2.numpy()
    with np.errstate(all="ignore"):
        ratio = lx / l2  # every try's scale sumlx/suml2, taken only where it is defined
        square = lx * lx
        positive = l2 > 0
        scale = np.where(l2[0] != 0, ratio[0], f32(0.0))
        best = scale * lx[0]
        chosen = scales[0].copy()
        better = np.empty(best.shape, bool)
        for k in range(1, scales.shape[0]):
            np.greater(square[k], best * l2[k], out=better)
            better &= positive[k]
            # copyto with a mask is the cheap select here (np.where allocates and is slower).
            np.copyto(scale, ratio[k], where=better)
            np.copyto(best, scale * lx[k], where=better)
            np.copyto(chosen, scales[k], where=better)
    return torch.from_numpy(scale), torch.from_numpy(chosen)
