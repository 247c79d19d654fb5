"""The CLI as a user runs it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factories import make_gguf


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_CACHE": str(Path(cwd or ".").absolute() / "no-hf-cache")}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_inspect_smollm2_json(smollm2_gguf: Path) -> None:
    result = run_cli("inspect", str(smollm2_gguf), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["format"] == "gguf"
    assert data["architecture"] == "llama"
    assert data["n_tensors"] == 272
    assert data["n_layers"] == 30
    assert data["tensor_types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert data["context_length"] == 8192
    assert data["moe"] is None
    assert data["problems"] == []
    assert data["file_size"] == smollm2_gguf.stat().st_size
    assert data["parameters"] > 134_000_000


def test_inspect_tensors_lists_every_tensor(smollm2_gguf: Path) -> None:
    result = run_cli("inspect", str(smollm2_gguf), "--tensors", "--json")
    tensors = json.loads(result.stdout)["tensors"]
    assert len(tensors) == 272
    assert tensors[0] == {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152],
                          "n_bytes": 30081024}
    text = run_cli("inspect", str(smollm2_gguf), "--tensors")
    assert "blk.29.ffn_down.weight" in text.stdout and "Q4_1" in text.stdout


def test_inspect_moe_json(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "moe.gguf", n_experts=4, expert_layout="split")
    data = json.loads(run_cli("inspect", str(path), "--json").stdout)
    explanation = data["moe"].pop("explanation")
    assert data["moe"] == {"n_experts": 4, "n_experts_used": 2, "layout": "split"}
    assert explanation.startswith("split: one tensor per expert (blk.N.ffn_*.E.weight)")
    assert "llama.cpp" in explanation and "load only stacked" in explanation


@pytest.mark.parametrize("layout", ["stacked", "split"])
def test_inspect_explains_the_expert_layout(tmp_path: Path, layout: str) -> None:
    path = make_gguf(tmp_path / "moe.gguf", n_experts=4, expert_layout=layout)
    text = run_cli("inspect", str(path)).stdout
    line = next(line for line in text.splitlines() if "expert layout" in line)
    assert f"expert layout {layout}: " in line and "split ones" in line
    fix = f"fix: modelyard relayout {path} --experts stacked"
    assert (fix in text) == (layout == "split")


@pytest.mark.parametrize("content,expected", [
    (b"GGML" + b"\0" * 40, "not a GGUF file"),
    (b"GGUF\x03\0\0\0" + b"\xff" * 16, "truncated or corrupt header"),
])
def test_unreadable_file_exits_2_with_one_line(tmp_path: Path, content: bytes,
                                               expected: str) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    before = sorted(tmp_path.iterdir())
    result = run_cli("inspect", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_inspect_missing_path_and_bad_option(tmp_path: Path) -> None:
    missing = run_cli("inspect", str(tmp_path / "nope.gguf"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_option = run_cli("inspect", "--frobnicate")
    assert bad_option.returncode == 2


def test_scan_json(tmp_path: Path) -> None:
    make_gguf(tmp_path / "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"junk")
    result = run_cli("scan", str(tmp_path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = {m["name"]: m for m in data["models"]}
    assert set(names) == {"a", "b"}
    assert names["b"]["problems"] and not names["a"]["problems"]


def test_resources_json() -> None:
    result = run_cli("resources", "--json")
    data = json.loads(result.stdout)
    assert data["ram_total_bytes"] >= data["ram_available_bytes"] > 0
    assert data["disk"]["free_bytes"] > 0
    assert isinstance(data["gpus"], list)
