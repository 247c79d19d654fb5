"""`modelyard convert` through a real subprocess: exit codes, one-line errors, JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf


def modelyard(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_convert_writes_gguf_and_prints_summary(tiny_models: dict[str, Path],
                                                tmp_path: Path) -> None:
    target = tmp_path / "out.gguf"
    done = modelyard("convert", str(tiny_models["llama"]), "-o", str(target), "--type", "q8_0",
                     "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert str(target) in done.stdout
    assert {t.tensor_type.name for t in gguf.GGUFReader(target).tensors} == {"Q8_0", "F32"}


def test_json_progress_lines(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    done = modelyard("convert", str(tiny_models["mixtral"]), "-o", str(tmp_path),
                     "--type", "F16", "--device", "cpu", "--json-progress")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
    assert all(a["done"] <= b["done"] for a, b in zip(progress, progress[1:], strict=False))
    assert any(e["event"] == "log" for e in events)
    result = events[-1]
    assert result["event"] == "result"
    assert result["output"] == str(tmp_path / "tiny-mixtral-F16.gguf")
    assert Path(result["output"]).is_file()


def test_bad_input_exits_2_with_one_line(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    cases = [
        ("convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.gguf")),
        ("convert", str(tiny_models["llama"]), "-o", str(tmp_path / "x.gguf"), "--type", "Q9"),
        ("convert", str(tiny_models["llama"]), "--to", "hf", "-o", str(tmp_path / "h")),
    ]
    for args in cases:
        done = modelyard(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("modelyard: "), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_exits_2_and_overwrite_replaces(tiny_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    target.write_bytes(b"keep me")
    done = modelyard("convert", str(tiny_models["llama"]), "-o", str(target))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert target.read_bytes() == b"keep me"
    done = modelyard("convert", str(tiny_models["llama"]), "-o", str(target), "--overwrite",
                     "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert target.read_bytes()[:4] == b"GGUF"


def test_dry_run_prints_plan_and_writes_nothing(smollm2_gguf: Path, tmp_path: Path) -> None:
    done = modelyard("convert", str(smollm2_gguf), "-o", str(tmp_path / "x.gguf"), "--type",
                     "Q8_0", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["n_tensors"] == 272 and plan["output_bytes"] > 0
    assert plan["estimated_peak_bytes"] < plan["naive_peak_bytes"]
    q_proj = next(t for t in plan["tensors"] if t["name"] == "blk.0.attn_q.weight")
    assert q_proj["source_types"] == ["Q4_1"]
    assert q_proj["operations"] == ["dequantize", "quantize"]
    assert list(tmp_path.iterdir()) == []


def test_dry_run_without_json_prints_a_short_summary(smollm2_gguf: Path, tmp_path: Path) -> None:
    done = modelyard("convert", str(smollm2_gguf), "-o", str(tmp_path / "x-hf"), "--to", "hf",
                     "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) < 12  # no per-tensor listing
    assert "272 tensors: F16 272" in lines
    assert "read from: Q4_1 210, F32 61, Q8_0 1" in lines
    assert any(line.startswith("operations: 211 dequantized, 60 Q/K rows permuted, 272 "
                               "converted") for line in lines)
    assert any(line.startswith("output ") and "peak memory about" in line for line in lines)
    assert "fallbacks: none" in lines
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cancels_cleanly(smollm2_gguf: Path, tmp_path: Path) -> None:
    target = tmp_path / "x-hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "convert", str(smollm2_gguf), "-o", str(target), "--to",
         "hf", "--device", "cpu", "--json-progress"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:  # wait until tensors are being written
        if json.loads(line)["event"] == "progress":
            break
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    process.wait(timeout=60)
    assert time.monotonic() - start < 10
    assert process.returncode == 1
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_source_needs_a_type(smollm2_gguf: Path, tmp_path: Path) -> None:
    done = modelyard("convert", str(smollm2_gguf), "-o", str(tmp_path / "out.gguf"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--type" in done.stderr and "Q4_1" in done.stderr
    assert not list(tmp_path.iterdir())


def test_an_hf_source_defaults_to_the_recommendation(tiny_models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    done = modelyard("convert", str(tiny_models["llama"]), "-o", str(tmp_path / "out.gguf"),
                     "--device", "cpu")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("no --type given"))
    chosen = line.split("writing ", 1)[1].split(",", 1)[0]
    reader = gguf.GGUFReader(tmp_path / "out.gguf")
    from app.core.quant import TARGETS

    assert int(reader.fields["general.file_type"].parts[-1][0]) == TARGETS[chosen].file_type
