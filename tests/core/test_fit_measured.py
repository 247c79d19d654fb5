"""The transformers estimate against the measured peak of the suite's own models, with the
whole context used: within 5 % over and never more than 3 % under (an under-estimate says
"fits" when it does not). llama.cpp is measured by tests/bench/fit_accuracy.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from bench.measure import run_measured

from app.core.estimate import estimate_hf_load
from app.core.formats.scan import inspect_path

MEASURE = r"""
import json, os, sys
import psutil
baseline = psutil.Process().memory_info().rss
import torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
path, ctx = sys.argv[1], int(sys.argv[2])
kwargs = {"gguf_file": os.path.basename(path)} if path.endswith(".gguf") else {}
folder = os.path.dirname(path) if kwargs else path
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
ids = torch.randint(5, model.config.vocab_size - 5, (1, ctx - 8))
with torch.no_grad():
    model.generate(ids, max_new_tokens=8, do_sample=False)
print(json.dumps({"baseline": baseline}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["hf", "gguf"])
def test_transformers_estimate_bounds_the_measured_peak(
        which: str, tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path]) -> None:
    path = tiny_models["llama"] if which == "hf" else tiny_llama_ggufs["F32"]
    estimate = estimate_hf_load(inspect_path(path), 256, dtype="float32").ram.total
    run = run_measured([sys.executable, "-c", MEASURE, str(path), "256"], timeout=200,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    measured = run.peak_rss - json.loads(run.stdout.strip().splitlines()[-1])["baseline"]
    error = (estimate - measured) / measured
    assert -0.03 <= error <= 0.05, f"estimate {estimate}, measured {measured}: {error:+.1%}"
