"""The transformers estimate against the measured peak of the suite's own models run as
Modelyard runs them, with the whole context used: within 5 % over and never more than 3 % under
(an under-estimate says "fits" when it does not). llama.cpp is measured by
tests/bench/fit_accuracy.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from bench.fit_accuracy import HF_CHILD
from bench.measure import run_measured

from app.core.estimate import estimate_hf_load
from app.core.formats.scan import inspect_path


@pytest.mark.slow
@pytest.mark.parametrize("which", ["hf", "gguf"])
def test_transformers_estimate_bounds_the_measured_peak(
        which: str, tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path]) -> None:
    path = tiny_models["llama"] if which == "hf" else tiny_llama_ggufs["F32"]
    estimate = estimate_hf_load(inspect_path(path), 256, dtype="float32").ram.total
    # Modelyard's own transformers run: its loader, a prefill of the whole context, 8 steps.
    run = run_measured([sys.executable, "-c", HF_CHILD, str(path), "256", "float32", "sdpa"],
                       timeout=200, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                         "PYTHONPATH": str(Path(__file__).parents[2])})
    measured = run.peak_rss - json.loads(run.stdout.strip().splitlines()[-1])["baseline"]
    error = (estimate - measured) / measured
    assert -0.03 <= error <= 0.05, f"estimate {estimate}, measured {measured}: {error:+.1%}"
