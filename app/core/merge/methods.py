"""Merge methods on whole tensors: float32 arithmetic on the tensors' own device.

Each function takes the inputs of one output tensor (already read, same shape) and the
parameters resolved for that tensor, and returns a float32 tensor on the inputs' device. The
semantics follow mergekit 0.1.5 (`merge_methods/` and `sparsify.py`), so a YAML written for
mergekit gives the same model here; the one difference is where randomness comes from: DARE
draws its masks from a generator seeded by the config seed, the tensor name and the input, so
the same config gives the same model whatever the device or the order tensors are merged in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from app.core.merge.params import tensor_seed  # noqa: F401 - part of the methods' API

# Inputs this close to colinear (|cos θ| above it) interpolate linearly: sin θ ≈ 0 otherwise.
SLERP_DOT_THRESHOLD = 0.9995
_NORM_EPS = 1e-8
# Norms below this are treated as zero when DARE rescales a masked delta (mergekit's eps).
RESCALE_EPS = 1e-7
# DARE's random numbers come in blocks of this many elements, each from its own seed, so the
# mask of any element range is the same however a tensor is split into chunks.
MASK_BLOCK = 1 << 20


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float],
           normalize: bool = True) -> torch.Tensor:
    """Σ wᵢ·xᵢ, divided by Σ wᵢ when `normalize`."""
    result = torch.zeros_like(tensors[0], dtype=torch.float32)
    for tensor, weight in zip(tensors, weights, strict=True):
        result.add_(_f32(tensor), alpha=float(weight))
    if normalize:
        result.div_(float(sum(weights)))
    return result


def slerp(t: float, base: torch.Tensor, other: torch.Tensor,
          dot_threshold: float = SLERP_DOT_THRESHOLD) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors, `base` at t = 0; linear when they are
    nearly colinear (the angle between them is then too small or too close to π to divide by
    its sine)."""
    a, b = _f32(base), _f32(other)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > _NORM_EPS, norm_a, torch.ones_like(norm_a))
    norm_b = torch.where(norm_b > _NORM_EPS, norm_b, torch.ones_like(norm_b))
    dot = float(((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    theta = torch.acos(torch.tensor(dot, dtype=torch.float32))
    sin_theta = torch.sin(theta)
    coef_a = float(torch.sin((1 - t) * theta) / sin_theta)
    coef_b = float(torch.sin(t * theta) / sin_theta)
    return coef_a * a + coef_b * b


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `density` fraction of elements with the largest |δ| (at least one): all above
    the k-th largest magnitude, and of those equal to it the first ones in order, to make k."""
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    flat = delta.abs().reshape(-1)
    keep_count = max(1, int(density * flat.numel()))
    threshold = torch.topk(flat, keep_count, sorted=False).values.min()
    keep = flat > threshold
    equal = flat == threshold
    keep |= equal & (torch.cumsum(equal, 0) <= keep_count - int(keep.sum()))
    return keep.reshape(delta.shape)


def mask_range(seed: int, start: int, end: int, density: float,
               device: torch.device) -> torch.Tensor:
    """DARE's keep-mask of flat elements [start, end): each kept with probability `density`.
    Drawn on the CPU (CUDA's generator gives other numbers for the same seed) in blocks seeded
    from `seed` and the block's index, then moved: every device and chunking, one model."""
    generator = torch.Generator(device="cpu")
    parts = []
    for block in range(start // MASK_BLOCK, (end - 1) // MASK_BLOCK + 1 if end > start else 0):
        generator.manual_seed((seed + block * 0x9E3779B97F4A7C15) & ((1 << 63) - 1))
        low = max(start - block * MASK_BLOCK, 0)
        high = min(end - block * MASK_BLOCK, MASK_BLOCK)
        # CPU draws are sequential: the first `high` numbers are those of a whole block.
        values = torch.rand(high, generator=generator, dtype=torch.float32)
        parts.append(values[low:high] < density)
    mask = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
    return mask.to(device)


def bernoulli_mask(shape: torch.Size, density: float, seed: int,
                   device: torch.device) -> torch.Tensor:
    """The DARE mask of a whole tensor (`mask_range` over all its elements)."""
    return mask_range(seed, 0, math.prod(shape), density, device).reshape(shape)


def rescale_l1(delta: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale `masked` back to the L1 norm of `delta` (mergekit's DARE rescale)."""
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def sparsify(method: str, delta: torch.Tensor, density: float, *, rescale: bool, seed: int
             ) -> torch.Tensor:
    """The delta the method keeps: top-|δ| for TIES, a random drop for DARE, all otherwise."""
    if method == "ties":
        if density >= 1:
            return delta
        return delta * magnitude_mask(delta, density)
    if method in ("dare_ties", "dare_linear"):
        if density >= 1:
            return delta
        masked = delta * bernoulli_mask(delta.shape, density, seed, delta.device)
        return rescale_l1(delta, masked) if rescale else masked
    return delta


def elect_sign_mask(weighted: torch.Tensor) -> torch.Tensor:
    """TIES sign election over stacked weighted deltas [n, ...]: each element's sign is that of
    Σ wᵢ·δᵢ (zero counts as positive); a delta takes part where its sign agrees."""
    majority = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0)
    return weighted.sign() == majority


def task_arithmetic_family(method: str, base: torch.Tensor, others: Sequence[torch.Tensor],
                           weights: Sequence[float], densities: Sequence[float], *,
                           normalize: bool, rescale: bool, lam: float = 1.0,
                           seeds: Sequence[int] = ()) -> torch.Tensor:
    """task_arithmetic, ties, dare_ties, dare_linear: base + λ·(combined deltas).

    The deltas δᵢ = xᵢ − base are sparsified (TIES: top `density` by magnitude; DARE: kept with
    probability `density`, rescaled), weighted, then summed (task arithmetic, DARE linear) or
    summed where their sign agrees with the elected sign (TIES, DARE TIES). `normalize` divides
    by the sum of the weights that took part.
    """
    base32 = _f32(base)
    if not others:
        return base32.clone()
    seeds = list(seeds) or [0] * len(others)
    weighted = torch.empty((len(others), *base32.shape), dtype=torch.float32,
                           device=base32.device)
    for index, other in enumerate(others):
        delta = _f32(other) - base32
        delta = sparsify(method, delta, densities[index], rescale=rescale, seed=seeds[index])
        torch.mul(delta, float(weights[index]), out=weighted[index])
        del delta
    weight_column = torch.tensor([float(w) for w in weights], dtype=torch.float32,
                                 device=base32.device).reshape(-1, *([1] * base32.dim()))
    if method in ("ties", "dare_ties"):
        agree = elect_sign_mask(weighted)
        mixed = (weighted * agree).sum(dim=0)
        divisor = (weight_column * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = weight_column.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    del weighted
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return base32 + mixed


def passthrough(tensor: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The one input, scaled when `scale` is given."""
    out = _f32(tensor)
    return out if scale is None else out * scale
