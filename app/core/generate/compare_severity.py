"""How bad a comparison's drift is, as one of four categories, with every threshold here.

The bands follow llama.cpp's published KL tables for 7-8 B models: Q8_0 and Q6_K stay below a
mean KL of about 0.005 with 97-99 % top-1 agreement, Q5/Q4 K-quants reach 0.01-0.04 at 92-96 %,
3-bit quants about 0.1 at 85-88 %, 2-bit quants 0.3 and more below 80 %. A candidate lands in
the worse of its KL band and its top-1 band, since either alone can hide damage (a flat output
distribution keeps KL small while the top choice changes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["indistinguishable", "minor", "noticeable", "degraded"]
SEVERITIES: tuple[Severity, ...] = ("indistinguishable", "minor", "noticeable", "degraded")


@dataclass(frozen=True)
class SeverityBand:
    """A candidate is in this band when its mean KL is at most `max_kl` (nats) and its top-1
    agreement is at least `min_top1` (a fraction); both bounds are inclusive."""

    severity: Severity
    max_kl: float
    min_top1: float
    words: str


MINOR = SeverityBand("minor", max_kl=0.05, min_top1=0.90, words="close to the reference")
NOTICEABLE = SeverityBand("noticeable", max_kl=0.2, min_top1=0.80, words="noticeably degraded")
# Below the noise floor the comparison cannot tell the candidate from the reference; the top-1
# bound keeps a sub-floor KL with disagreeing predictions (a flat distribution) out of it.
INDISTINGUISHABLE_MIN_TOP1 = MINOR.min_top1
DEGRADED_WORDS = "heavily degraded"


def severity_of(kl_mean: float, top1: float, floor: float | None = None) -> Severity:
    """The category of a candidate with this mean KL and top-1 agreement, given the smallest
    KL the comparison can resolve (None: no floor known)."""
    if floor is not None and kl_mean <= floor and top1 >= INDISTINGUISHABLE_MIN_TOP1:
        return "indistinguishable"
    for band in (MINOR, NOTICEABLE):
        if kl_mean <= band.max_kl and top1 >= band.min_top1:
            return band.severity
    return "degraded"


def severity_words(kl_mean: float, top1: float, floor: float | None = None) -> str:
    """The verdict's closing words: the category, and for a worse one the bound it missed
    (on a model with flat output distributions top-1 alone can decide it, which the reader
    should see)."""
    severity = severity_of(kl_mean, top1, floor)
    if severity == "indistinguishable":
        resolution = f" (noise floor KL {floor:.0e})" if floor is not None else ""
        return f"indistinguishable from the reference at this comparison's resolution{resolution}"
    if severity == "minor":
        return MINOR.words
    missed = MINOR if severity == "noticeable" else NOTICEABLE
    reason = (f"mean KL above {missed.max_kl:g}" if kl_mean > missed.max_kl
              else f"top-1 agreement below {missed.min_top1:.0%}")
    words = NOTICEABLE.words if severity == "noticeable" else DEGRADED_WORDS
    return f"{words} ({reason})"


def severity_legend() -> tuple[tuple[Severity, str], ...]:
    """Each category with the rule that puts a candidate in it, for a report's reader."""
    def rule(band: SeverityBand) -> str:
        return f"mean KL <= {band.max_kl:g} and top-1 >= {band.min_top1:.0%}"

    return (
        ("indistinguishable", f"mean KL <= the noise floor and top-1 >= "
                              f"{INDISTINGUISHABLE_MIN_TOP1:.0%}"),
        ("minor", rule(MINOR)),
        ("noticeable", rule(NOTICEABLE)),
        ("degraded", "anything worse"),
    )
