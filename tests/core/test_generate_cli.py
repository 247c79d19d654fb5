"""`modelyard generate`, `doctor` and `compare` as a user runs them: subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.generate.compare import CompareResult
from app.core.generate.compare_severity import SEVERITIES
from factories import drop_tensors

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(cwd / "no-hf-cache")}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


def test_generate_json_has_the_result(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("generate", str(tiny_models["llama"]), "--prompt", "Hello",
                     "--max-tokens", "5", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("text", "tokens_per_s", "backend", "load_s", "peak_bytes", "token_ids",
                "n_prompt_tokens", "n_generated", "prompt_tokens_per_s", "device"):
        assert key in data
    assert data["backend"] == "transformers" and data["peak_bytes"] > 0


@needs_llama_cpp
def test_generate_streams_the_answer(smollm2_gguf: Path, tmp_path: Path) -> None:
    result = run_cli("generate", str(smollm2_gguf), "--prompt",
                     "What is the capital of France?", "--system",
                     "You are a helpful assistant.", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "The capital of France is Paris."
    assert "llama.cpp on cpu" in result.stderr and "tokens/s" in result.stderr


@needs_llama_cpp
def test_compare_json_keys(tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path],
                           tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    result = run_cli("compare", str(tiny_models["llama"]), str(tiny_llama_ggufs["Q8_0"]),
                     "--text", str(text), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("ppl_ref", "ppl_candidate", "kl_mean", "kl_p99", "top1_agreement", "n_tokens",
                "per_token_kl", "verdict", "severity"):
        assert key in data
    assert data["severity"] in SEVERITIES
    assert len(data["per_token_kl"]) == data["n_tokens"] > 100
    assert data["text_source"] == str(text)
    assert data["verdict"].startswith("Q8_0 keeps")


def test_compare_text_prints_the_severity_and_its_thresholds(capsys) -> None:  # type: ignore[no-untyped-def]
    from app.cli.generate import print_compare_result

    print_compare_result(CompareResult(
        ppl_ref=10.0, ppl_candidate=11.0, kl_mean=0.3, kl_p99=1.0, top1_agreement=0.7,
        n_tokens=2, per_token_kl=(0.2, 0.4), verdict="Q2_K keeps 70 % …", reference="a",
        candidate="b", ref_backend="transformers", candidate_backend="llama.cpp",
        text_source="t", window_tokens=512, n_windows=1, peak_bytes=1, noise_floor=3e-3))
    lines = capsys.readouterr().out.splitlines()
    assert "severity         degraded" in lines
    legend = [line.split() for line in lines if line.startswith(" " * 16)]
    assert [words[0] for words in legend] == list(SEVERITIES)
    assert any("0.05" in line and "90%" in line for line in lines)


def test_doctor_names_missing_tensors_and_exits_2(tiny_models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_models["llama"], folder)
    drop_tensors(folder / "model.safetensors", ["model.layers.1.post_attention_layernorm.weight"])
    result = run_cli("doctor", str(folder), "--cpu", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: 1 tensor(s) that LlamaForCausalLM needs" in result.stdout
    assert "model.layers.1.post_attention_layernorm.weight" in result.stdout
    assert "→ rebuild the checkpoint" in result.stdout
    healthy = run_cli("doctor", str(tiny_models["llama"]), "--json", "--cpu", cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stderr
    data = json.loads(healthy.stdout)
    assert data["ok"] is True and data["findings"] == [] and data["backend"] == "transformers"


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = run_cli("generate", str(tmp_path / "nope"), "--prompt", "hi", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr
    text = run_cli("compare", str(tmp_path), str(tmp_path), "--text", str(tmp_path / "x.txt"),
                   cwd=tmp_path)
    assert text.returncode == 2 and "x.txt: no such file" in text.stderr


def test_nonsense_options_exit_2(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("generate", str(tiny_models["llama"]), "--prompt", "hi",
                     "--max-tokens", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "max tokens must be at least 1" in result.stderr


@needs_llama_cpp
def test_ctrl_c_cancels_generation_cleanly(smollm2_gguf: Path, tmp_path: Path) -> None:
    import signal

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "no-hf-cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "generate", str(smollm2_gguf), "--prompt",
         "Write a very long story about a dragon.", "--max-tokens", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert process.stdout is not None
    first = process.stdout.read(1)  # the first streamed character: generation is under way
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert first and process.returncode == 1
    assert "cancelled by the user" in err
    assert "Traceback" not in err
