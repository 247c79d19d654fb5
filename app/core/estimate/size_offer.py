"""When the preferred standard mix (Q4_K_M) does not fit a target, the largest custom mix that
does: a size target for the converter, between the best standard mix that fits and the one
that does not.

The size is found by judging models whose tensors lie between the two standard mixes' sizes
(each tensor scaled by the same fraction of the way up), with the same run estimate as every
other verdict; the converter's size target then chooses the types that fill it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.core.estimate.verdict import CandidateFit, Machine, Verdict, fully_fits, judge
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.quant.size_target import parse_size

# A custom mix less than this much larger than the standard one below is not worth a
# conversion of its own.
MIN_GAIN = 0.03
STEPS = 24  # bisection steps over the fraction: far finer than a file's size matters


@dataclass(frozen=True)
class SizeOffer:
    """A custom mix that fully fits where the preferred standard mix does not."""

    preferred: str  # the standard mix that does not fit ("Q4_K_M")
    below: str  # the best standard mix that fits
    size_bytes: int  # the size target (whole file), as `size_text` reads
    size_text: str  # the size target as a user types it ("4.03GiB")
    text: str  # "Q4_K_M does not fit; a 4.0 GiB custom mix does"
    verdict: Verdict  # of a model of that size

    def to_json(self) -> dict[str, Any]:
        return {"preferred": self.preferred, "below": self.below,
                "size_bytes": self.size_bytes, "size": self.size_text, "text": self.text,
                **self.verdict.to_json()}


def size_offer(fits: Sequence[CandidateFit], target: Machine, context: int,
               **options: Any) -> SizeOffer | None:
    """The offer for `fits` (a model's candidates judged for `target`), or None when the
    preferred mix fits, no standard conversion fits below it, or the gain would be small."""
    preferred = next((f for f in fits if f.candidate.preferred and f.candidate.writable), None)
    if preferred is None or fully_fits(preferred.verdict, target):
        return None
    smaller = [f for f in fits if not f.candidate.existing and f.candidate.writable
               and not f.candidate.requantizes and fully_fits(f.verdict, target)
               and f.candidate.model.file_size < preferred.candidate.model.file_size]
    if not smaller:
        return None
    below = max(smaller, key=lambda f: f.candidate.model.file_size)
    low, high = below.candidate.model, preferred.candidate.model
    sizes = {t.name: t.n_bytes for t in low.tensors}
    if set(sizes) != {t.name for t in high.tensors}:
        return None
    best: tuple[ModelInfo, Verdict] | None = None
    lo, hi = 0.0, 1.0
    for _ in range(STEPS):
        middle = (lo + hi) / 2
        model = _between(low, high, sizes, middle)
        verdict = judge(model, target, context, **options)
        if fully_fits(verdict, target):
            best, lo = (model, verdict), middle
        else:
            hi = middle
    if best is None or best[0].file_size < low.file_size * (1 + MIN_GAIN):
        return None
    text_size = _size_text(best[0].file_size)
    size = parse_size(text_size)
    return SizeOffer(preferred.candidate.quant, below.candidate.quant, size, text_size,
                     f"{preferred.candidate.quant} does not fit; a {format_bytes(size)} "
                     "custom mix does", best[1])


def _between(low: ModelInfo, high: ModelInfo, low_bytes: dict[str, int],
             fraction: float) -> ModelInfo:
    tensors = tuple(replace(t, n_bytes=low_bytes[t.name]
                            + int((t.n_bytes - low_bytes[t.name]) * fraction))
                    for t in high.tensors)
    return replace(high, tensors=tensors, file_size=sum(t.n_bytes for t in tensors),
                   name=f"{high.name} (custom mix)")


def _size_text(size: int) -> str:
    """`size` rounded down to three significant digits, in the unit that reads best."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            decimals = max(0, 2 - int(math.log10(value)))
            step = 10**decimals
            return f"{math.floor(value * step) / step:.{decimals}f}{unit}"
    return f"{size}B"
