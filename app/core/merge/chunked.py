"""The merge methods computed a chunk of elements at a time, for the job.

`methods` states each formula on whole float32 tensors; here the same results are computed
while holding only the inputs as stored (bf16 stays bf16), the output in its dtype and float32
temporaries of one chunk. What needs the whole tensor is gathered in a first pass: SLERP's
norms and dot product, TIES's magnitude threshold (an exact k-th largest found with two
histogram passes over the float bits), DARE's L1 norms before and after the drop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from app.core.merge import methods

CHUNK_ELEMENTS = 1 << 20

Chunk = tuple[int, int]


def chunks(count: int, size: int = CHUNK_ELEMENTS) -> list[Chunk]:
    return [(start, min(start + size, count)) for start in range(0, count, size)] or [(0, 0)]


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)


def kth_largest(values: Callable[[Chunk], torch.Tensor], pieces: Sequence[Chunk],
                k: int, device: torch.device) -> tuple[float, int]:
    """The k-th largest of non-negative float32 values produced chunk by chunk, exactly, and
    how many values are strictly larger: their bit patterns order like the values, so two
    16-bit histograms find it."""
    high = torch.zeros(1 << 15, dtype=torch.int64, device=device)
    for piece in pieces:
        bits = values(piece).view(torch.int32)
        high += torch.bincount(bits >> 16, minlength=1 << 15)
    above = torch.flip(torch.cumsum(torch.flip(high, [0]), 0), [0])  # count of bins >= index
    bin_high = int((above >= k).nonzero().max())
    larger = int(above[bin_high + 1]) if bin_high + 1 < above.numel() else 0
    low = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for piece in pieces:
        bits = values(piece).view(torch.int32)
        low += torch.bincount(bits[(bits >> 16) == bin_high] & 0xFFFF, minlength=1 << 16)
    above = torch.flip(torch.cumsum(torch.flip(low, [0]), 0), [0])
    bin_low = int((above >= k - larger).nonzero().max())
    larger += int(above[bin_low + 1]) if bin_low + 1 < above.numel() else 0
    bits = torch.tensor([(bin_high << 16) | bin_low], dtype=torch.int32)
    return float(bits.view(torch.float32)), larger


class _TopK:
    """TIES's keep-mask, chunk by chunk: everything above the threshold, and as many elements
    equal to it as make exactly k, the first ones in order (as `methods.magnitude_mask`)."""

    def __init__(self, threshold: float, strictly_above: int, k: int) -> None:
        self.threshold = threshold
        self.ties_left = k - strictly_above

    def mask(self, magnitude: torch.Tensor) -> torch.Tensor:
        keep = magnitude > self.threshold
        equal = magnitude == self.threshold
        if self.ties_left > 0:
            count = int(equal.sum())
            # Only the chunk where the ties run out needs to know which come first.
            taken = equal if count <= self.ties_left else \
                equal & (torch.cumsum(equal, 0) <= self.ties_left)
            self.ties_left -= min(count, self.ties_left)
            keep |= taken
        return keep


def merge_into(method: str, inputs: Sequence[torch.Tensor], params: dict[str, Any],
               out: torch.Tensor, chunk: int = CHUNK_ELEMENTS) -> None:
    """Merge flat `inputs` (any float dtype, one device) into the flat `out`."""
    pieces = chunks(out.numel(), chunk)
    if method == "passthrough":
        scale = params.get("scale")
        for s, e in pieces:
            out[s:e] = methods.passthrough(inputs[0][s:e], scale)
        return
    if method == "linear":
        for s, e in pieces:
            out[s:e] = methods.linear([x[s:e] for x in inputs], params["weights"],
                                      params["normalize"])
        return
    if method == "slerp":
        _slerp_into(params["t"], inputs[0], inputs[1], out, pieces)
        return
    _task_arithmetic_into(method, inputs[0], list(inputs[1:]), params, out, pieces)


def _slerp_into(t: float, base: torch.Tensor, other: torch.Tensor, out: torch.Tensor,
                pieces: Sequence[Chunk]) -> None:
    norm_a = norm_b = dot = 0.0
    for s, e in pieces:
        a, b = _f32(base[s:e]).double(), _f32(other[s:e]).double()
        norm_a += float((a * a).sum())
        norm_b += float((b * b).sum())
        dot += float((a * b).sum())
    norm_a, norm_b = math.sqrt(norm_a), math.sqrt(norm_b)
    norm_a = norm_a if norm_a > 1e-8 else 1.0
    norm_b = norm_b if norm_b > 1e-8 else 1.0
    cos = max(-1.0, min(1.0, dot / (norm_a * norm_b)))
    if abs(cos) > methods.SLERP_DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(cos)
        coef_a = math.sin((1 - t) * theta) / math.sin(theta)
        coef_b = math.sin(t * theta) / math.sin(theta)
    for s, e in pieces:
        out[s:e] = coef_a * _f32(base[s:e]) + coef_b * _f32(other[s:e])


def _task_arithmetic_into(method: str, base: torch.Tensor, others: list[torch.Tensor],
                          params: dict[str, Any], out: torch.Tensor,
                          pieces: Sequence[Chunk]) -> None:
    weights = [float(w) for w in params["weights"]]
    densities = [float(d) for d in params["densities"]]
    seeds = list(params.get("seeds") or [0] * len(others))
    count = out.numel()
    device = out.device

    def delta(index: int, piece: Chunk) -> torch.Tensor:
        s, e = piece
        return _f32(others[index][s:e]) - _f32(base[s:e])

    topk: list[_TopK | None] = [None] * len(others)
    scales = [1.0] * len(others)
    dare = method in ("dare_ties", "dare_linear")
    for index, density in enumerate(densities):
        if density >= 1 or count == 0:
            continue
        if method == "ties":
            k = max(1, int(density * count))
            threshold, above = kth_largest(lambda p, i=index: delta(i, p).abs(), pieces, k,
                                           device)
            topk[index] = _TopK(threshold, above, k)
        elif dare and params["rescale"]:
            before = after = 0.0
            for piece in pieces:
                d = delta(index, piece)
                kept = d * methods.mask_range(seeds[index], piece[0], piece[1], density, device)
                before += float(d.abs().double().sum())
                after += float(kept.abs().double().sum())
            if before >= methods.RESCALE_EPS and after >= methods.RESCALE_EPS:
                scales[index] = before / after
    consensus = method in ("ties", "dare_ties")
    for piece in pieces:
        s, e = piece
        b = _f32(base[s:e])
        weighted = torch.empty((len(others), e - s), dtype=torch.float32, device=device)
        for index in range(len(others)):
            d = _f32(others[index][s:e]) - b
            selector = topk[index]
            if selector is not None:
                d = d * selector.mask(d.abs())
            elif dare and densities[index] < 1:
                d = d * methods.mask_range(seeds[index], s, e, densities[index], device)
                if scales[index] != 1.0:
                    d = d * scales[index]
            torch.mul(d, weights[index], out=weighted[index])
        column = torch.tensor(weights, dtype=torch.float32, device=device).reshape(-1, 1)
        if consensus:
            agree = methods.elect_sign_mask(weighted)
            mixed = (weighted * agree).sum(dim=0)
            divisor = (column * agree).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = weighted.sum(dim=0)
            total = float(sum(weights))
            divisor = torch.full_like(mixed, 1.0 if abs(total) < 1e-8 else total)
        if params["normalize"]:
            mixed /= divisor
        if params["lambda"] != 1:
            mixed *= params["lambda"]
        out[s:e] = b + mixed
