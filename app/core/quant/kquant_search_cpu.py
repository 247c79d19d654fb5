"""The K-quant scale searches for CPU tensors: make_qkx2_quants (and with it make_qkx3_quants),
make_qx_quants and make_q3_quants, and the requantization that follows them, run by the
compiled kernels of kquant_kernels.

The kernels do the C's float32 operations in the C's order for every sub-block, as the torch
versions in kquant_search, kquants and weighted_search do on other devices; both give ggml's
bytes. The kernels work on small tiles of sub-blocks that stay in the L1 cache, instead of
sweeping whole (sub-blocks, size) planes through memory a few hundred times, and they run
without the GIL, so the converter's worker threads use every core.
"""

from __future__ import annotations

import numpy as np
import torch

f32 = np.float32
# Whether CPU tensors take these searches. The torch versions give the same results on every
# device; tests turn this off to check them on the CPU.
ENABLED = True


def handles(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether these kernels take sub-blocks `x` (and the tensors that go with them):
    float32 on the CPU, and ENABLED."""
    return (ENABLED
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *others)))


def _kernels():  # noqa: ANN202 (the module)
    # Imported on first use: numba's import and loading the cached kernels take about half a
    # second that only jobs which quantize should pay.
    from app.core.quant import kquant_kernels

    return kquant_kernels


def _array(values: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(values.detach().numpy())


def make_qkx2_quants(x: torch.Tensor, weights: torch.Tensor | None, nmax: int, rmin: float,
                     rdelta: float, nstep: int, use_mad: bool,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kquant_search.make_qkx2_quants for CPU float32 tensors: (scale [n], the_min [n],
    L [n, size] as float codes 0..nmax).

    `weights` None stands for Q4_K's and Q5_K's own, av_x + |x| with av_x = sqrtf(sum of x²
    from 0.0f / size) per sub-block, made by the kernel. With weights this is also
    make_qkx3_quants (use_mad false): the C of the two differs only in tests that agree.
    """
    values = _array(x)
    n, size = values.shape
    importance = np.empty((0, size), f32) if weights is None else _array(weights)
    numerators = np.array([f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)
                           for step in range(nstep + 1)], f32)
    scale = np.empty(n, f32)
    the_min = np.empty(n, f32)
    codes = np.empty((n, size), f32)
    _kernels().qkx2(values, importance, weights is None, nmax, numerators, use_mad, scale,
                    the_min, codes)
    return torch.from_numpy(scale), torch.from_numpy(the_min), torch.from_numpy(codes)


def make_qx_quants(x: torch.Tensor, weights: torch.Tensor | None,
                   nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """make_qx_quants(size, nmax, x, L, rmse_type=1, qw=weights) for CPU float32 sub-blocks
    x [n, size]; `weights` None is the C's NULL (w = x*x, as Q6_K calls it). Returns
    (scale [n], L [n, size] as float codes 0..2*nmax-1; 0 for an all-zero sub-block)."""
    values = _array(x)
    n, size = values.shape
    importance = np.empty((0, size), f32) if weights is None else _array(weights)
    scale = np.empty(n, f32)
    codes = np.empty((n, size), f32)
    _kernels().qx(values, importance, weights is None, nmax, scale, codes)
    return torch.from_numpy(scale), torch.from_numpy(codes)


def requantize(x: torch.Tensor, search_codes: torch.Tensor, d: torch.Tensor,
               dm: torch.Tensor | None, low: int, high: int,
               offset: int = 0) -> torch.Tensor:
    """The K-quants' requantization on the CPU: for sub-blocks x [..., size] with their
    rounded scales d and mins dm (one per sub-block; None for none), the search's codes where
    d is 0, else MAX(low, MIN(high, nearest_int((x + dm) / d))) + offset. Float codes of x's
    shape."""
    size = x.shape[-1]
    values = _array(x.reshape(-1, size))
    scales = _array(d.reshape(-1))
    shifts = np.zeros_like(scales) if dm is None else _array(dm.reshape(-1))
    codes = np.empty_like(values)
    _kernels().requantize(values, _array(search_codes.reshape(-1, size)), scales, shifts, low,
                          high, offset, codes)
    return torch.from_numpy(codes).reshape(x.shape)


def make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kquant_search.make_q3_quants for CPU float32 sub-blocks x [n, size]: (scale [n],
    L [n, size] as float codes 0..2*nmax-1; 0 for an all-zero sub-block)."""
    values = _array(x)
    scale = np.empty(values.shape[0], f32)
    codes = np.empty_like(values)
    _kernels().q3(values, nmax, scale, codes)
    return torch.from_numpy(scale), torch.from_numpy(codes)
