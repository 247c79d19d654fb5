"""`modelyard --self-test` scans, converts and tests a tiny model and says so step by step."""

from __future__ import annotations

import io

from app.self_test import run_self_test


def test_self_test_passes_every_step() -> None:
    out = io.StringIO()
    assert run_self_test(out) == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    for step in ("model", "scan", "convert", "generate"):
        assert any(line.startswith(f"self-test: {step} ok") for line in lines), lines
    assert lines[-1] == "self-test: passed"
