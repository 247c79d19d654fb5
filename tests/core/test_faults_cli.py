"""Faults from the outside: corrupt and truncated files, wrong paths, a conversion killed with
SIGKILL. Each gives exit code 2 with the reader's sentence, or a leftover the scan reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import app
from app.core.convert import ConvertRequest
from app.core.formats.scan import scan_paths
from app.core.jobs import RecordingReporter
from factories import make_gguf

# The checkout under test, whatever the working folder or an installed copy say.
ENV = {**os.environ, "PYTHONPATH": str(Path(app.__file__).parent.parent)}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**ENV, "HF_HUB_CACHE": str(cwd / "no-hf-cache")}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_fit_on_a_truncated_gguf_exits_2_with_the_readers_sentence(tmp_path: Path) -> None:
    model = make_gguf(tmp_path / "model.gguf")
    data = model.read_bytes()
    model.write_bytes(data[: len(data) - 5000])
    result = run_cli("fit", str(model), "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert str(model) in result.stderr and "cut off" in result.stderr


def test_fit_on_a_corrupt_file_exits_2(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 16)
    result = run_cli("fit", str(model), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "truncated or corrupt header" in result.stderr and result.stdout == ""


def test_scan_of_a_path_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    result = run_cli("scan", str(tmp_path / "nowhere"), "--no-hf-cache", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in result.stderr


def test_scan_lists_leftover_parts_as_incomplete_outputs(tmp_path: Path) -> None:
    make_gguf(tmp_path / "good.gguf")
    (tmp_path / "half.gguf.part").write_bytes(b"GGUF" + b"\0" * 96)
    (tmp_path / "hf-out.part").mkdir()
    (tmp_path / "hf-out.part" / "config.json").write_text("{}")
    (tmp_path / "notes.part").write_text("not ours")
    result = run_cli("scan", str(tmp_path), "--no-hf-cache", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == ["good"]
    assert [{k: v for k, v in i.items() if k != "modified"} for i in data["incomplete"]] == [
        {"path": str(tmp_path / "half.gguf.part"), "bytes": 100},
        {"path": str(tmp_path / "hf-out.part"), "bytes": 2}]
    written = (tmp_path / "half.gguf.part").stat().st_mtime
    assert data["incomplete"][0]["modified"] == written
    text = run_cli("scan", str(tmp_path), "--no-hf-cache", cwd=tmp_path).stdout
    assert f"{tmp_path / 'half.gguf.part'} (100 B): incomplete output" in text


def _kill_when_writing(process: subprocess.Popen[bytes], part: Path) -> None:
    deadline = time.monotonic() + 100
    while not part.exists():
        assert process.poll() is None, "the conversion ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_conversion_killed_with_sigkill_leaves_a_part_that_a_rerun_replaces(
        tmp_path: Path) -> None:
    # Many small layers: the output is open for long enough to be caught while written.
    source = make_gguf(tmp_path / "src.gguf", n_layers=48, n_embd=128, n_ff=512)
    out = tmp_path / "out" / "model-Q8_0.gguf"
    out.parent.mkdir()
    part = out.with_name(out.name + ".part")
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "convert", str(source), "-o", str(out), "--type", "Q8_0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=ENV)
    _kill_when_writing(process, part)
    assert process.returncode == -signal.SIGKILL
    assert part.exists() and not out.exists()
    found = scan_paths([out.parent])
    assert found.models == () and [i.path for i in found.incomplete] == [part]

    ConvertRequest(source, out, "Q8_0").run(RecordingReporter())
    assert out.exists() and not part.exists()
    assert scan_paths([out.parent]).incomplete == ()
