"""The compare verdict's severity: each threshold decides at its boundary, and the report says
the same thing as the category."""

from __future__ import annotations

import math

import pytest

from app.core.generate.compare import CompareResult
from app.core.generate.compare_metrics import verdict
from app.core.generate.compare_severity import (
    INDISTINGUISHABLE_MIN_TOP1,
    MINOR,
    NOTICEABLE,
    SEVERITIES,
    severity_legend,
    severity_of,
)


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


def test_the_noise_floor_boundary() -> None:
    floor = 1e-3
    assert severity_of(floor, 1.0, floor) == "indistinguishable"  # inclusive
    assert severity_of(above(floor), 1.0, floor) == "minor"
    assert severity_of(0.0, 1.0, None) == "minor"  # no floor known: never claimed
    # Under the floor but with predictions that disagree: not indistinguishable.
    assert severity_of(1e-4, INDISTINGUISHABLE_MIN_TOP1, floor) == "indistinguishable"
    assert severity_of(1e-4, below(INDISTINGUISHABLE_MIN_TOP1), floor) == "noticeable"


@pytest.mark.parametrize("band, worse", [(MINOR, "noticeable"), (NOTICEABLE, "degraded")])
def test_each_band_is_inclusive_at_its_bounds(band, worse) -> None:  # type: ignore[no-untyped-def]
    assert severity_of(band.max_kl, band.min_top1, 0.0) == band.severity
    assert severity_of(above(band.max_kl), band.min_top1, 0.0) == worse
    assert severity_of(band.max_kl, below(band.min_top1), 0.0) == worse


def test_the_worse_of_kl_and_top1_decides() -> None:
    # A small KL does not excuse top-1 agreement in the degraded band, and the other way round.
    assert severity_of(0.01, below(NOTICEABLE.min_top1), 1e-6) == "degraded"
    assert severity_of(above(NOTICEABLE.max_kl), 1.0, 1e-6) == "degraded"
    assert severity_of(0.1, 0.99, 1e-6) == "noticeable"


def test_the_bands_are_ordered() -> None:
    assert SEVERITIES == ("indistinguishable", "minor", "noticeable", "degraded")
    assert MINOR.max_kl < NOTICEABLE.max_kl and MINOR.min_top1 > NOTICEABLE.min_top1
    assert [name for name, _ in severity_legend()] == list(SEVERITIES)
    assert "0.05" in dict(severity_legend())["minor"]
    assert "90%" in dict(severity_legend())["minor"]


@pytest.mark.parametrize("kl, top1, floor, words", [
    (5e-7, 1.0, 1e-6, "indistinguishable from the reference at this comparison's resolution "
                      "(noise floor KL 1e-06)"),
    (0.03, 0.9712, 1e-6, "close to the reference"),
    (0.1, 0.95, 1e-6, "noticeably degraded (mean KL above 0.05)"),
    (0.01, 0.85, 1e-6, "noticeably degraded (top-1 agreement below 90%)"),
    (0.5, 0.6, 1e-6, "heavily degraded (mean KL above 0.2)"),
    (3e-4, 0.793, 1e-6, "heavily degraded (top-1 agreement below 80%)"),
])
def test_the_verdict_words_follow_the_category(kl: float, top1: float, floor: float,
                                               words: str) -> None:
    assert verdict("Q4_K_M", kl, top1, floor).endswith(": " + words)


def test_the_result_carries_its_category_through_json() -> None:
    result = CompareResult(
        ppl_ref=10.0, ppl_candidate=10.5, kl_mean=0.1, kl_p99=0.5, top1_agreement=0.95,
        n_tokens=3, per_token_kl=(0.05, 0.1, 0.15), verdict="v", reference="a", candidate="b",
        ref_backend="transformers", candidate_backend="llama.cpp", text_source="t",
        window_tokens=512, n_windows=1, peak_bytes=1, noise_floor=3e-3)
    assert result.severity == "noticeable"
    assert result.to_json()["severity"] == "noticeable"
