"""`modelyard --self-test` scans, converts and tests a tiny model and says so step by step; it
generates with llama.cpp from the converted GGUF, and with transformers only without llama.cpp."""

from __future__ import annotations

import io

import pytest

import app.core.jobs_process
import app.self_test
from app.core.generate.backends.llama_cpp import llama_cpp_available
from app.core.jobs import run_job
from app.self_test import run_self_test


def self_test_lines() -> list[str]:
    out = io.StringIO()
    assert run_self_test(out) == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    for step in ("model", "scan", "convert", "K-quants", "generate"):
        assert any(line.startswith(f"self-test: {step} ok") for line in lines), lines
    assert lines[-1] == "self-test: passed"
    # Each compiled K-quant kernel is run: Q3_K's search, Q4_K's, Q6_K's.
    kquants = next(line for line in lines if line.startswith("self-test: K-quants ok"))
    assert all(qtype in kquants for qtype in ("Q3_K", "Q4_K", "Q6_K")), kquants
    return lines


def generate_line(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("self-test: generate ok"))


@pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python is not installed")
def test_self_test_generates_with_llama_cpp_from_the_converted_gguf() -> None:
    line = generate_line(self_test_lines())
    assert "with llama.cpp from tiny-llama-Q8_0.gguf in a job process" in line, line


def test_without_llama_cpp_the_self_test_generates_with_transformers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(app.self_test, "llama_cpp_available", lambda: False)
    # The job process is checked above; here the generation runs in this process, which has
    # torch and transformers loaded already (a child would load them again, for seconds).
    monkeypatch.setattr(app.core.jobs_process, "run_in_child", run_job)
    line = generate_line(self_test_lines())
    expected = "with transformers from tiny-llama in a job process, llama-cpp-python not installed"
    assert expected in line, line
