"""Compute jobs in a child process: results, streamed calls, crashes, cancel that escalates."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest
from child_jobs import Echo, EchoResult, KilledBySystem, NativeSleep, Segfault

from app.core.convert.job import ConvertRequest
from app.core.generate.request import GenerateRequest
from app.core.jobs import RecordingReporter, runs_in_child_process
from app.core.jobs_process import describe_exit, run_in_child
from app.core.jobs_wire import WireError, decode, encode


def test_a_request_and_its_result_cross_as_json() -> None:
    request = ConvertRequest(Path("/m/src"), Path("/m/out.gguf"), out_type="Q8_0", pure=True)
    assert decode(encode(request)) == request
    pieces: list[str] = []
    generate = GenerateRequest(Path("/m/x.gguf"), "hi", on_text=pieces.append)
    encoded = encode(generate)
    assert encoded["fields"]["on_text"] == {"__callback__": "on_text"}
    rebuilt = decode(encoded, lambda name: pieces.append)
    assert rebuilt == generate and rebuilt.on_text == pieces.append
    value = EchoResult("ab", 7, (1.5, float("inf")))
    back = decode(encode({"r": value, "p": [Path("/x")]}))
    assert back["r"].numbers[1] == math.inf and back["p"] == [Path("/x")]


def test_only_dataclasses_and_enums_are_rebuilt() -> None:
    with pytest.raises(WireError):
        decode({"__dataclass__": "os:system", "fields": {"command": "true"}})
    with pytest.raises(WireError):
        decode({"__dataclass__": "app.core.convert.job:ConvertRequest",
                "fields": {"source": "x", "evil": 1}})
    with pytest.raises(WireError):
        encode(object())


def test_compute_requests_say_they_run_in_a_child() -> None:
    from app.core.formats.scan import ScanRequest
    from app.core.generate.compare import CompareRequest

    assert runs_in_child_process(ConvertRequest(Path("a")))
    assert runs_in_child_process(GenerateRequest(Path("a"), "p"))
    assert runs_in_child_process(CompareRequest(Path("a"), Path("b")))
    assert not runs_in_child_process(ScanRequest(()))


def test_a_child_streams_progress_logs_calls_and_its_result(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    pieces: list[str] = []
    out = tmp_path / "out.txt"
    result = run_in_child(Echo(("a", "b", "c"), out=out, on_text=pieces.append), reporter)
    assert result.status == "done", reporter.lines
    assert result.value == EchoResult("abc", result.value.pid, (1.5, math.inf))
    assert result.value.pid != os.getpid()
    assert pieces == ["a", "b", "c"]
    assert reporter.progress_calls[-1] == (3.0, 3.0, "c")
    assert f"pid {result.value.pid}" in reporter.messages("info")
    assert out.read_text() == "abc"


def test_a_segfault_is_a_failed_job_with_its_signal_and_last_lines() -> None:
    reporter = RecordingReporter()
    result = run_in_child(Segfault(), reporter)
    assert result.status == "failed" and result.exit_code == 1
    assert "SIGSEGV" in result.error and "exit status -11" in result.error
    assert "crash in native code" in result.error
    last = reporter.messages("error")[-1]
    assert last.startswith("its last lines of output") and "Fatal Python error" in last


def test_a_killed_child_fails_and_its_partial_output_is_removed(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    out = tmp_path / "model.gguf"
    result = run_in_child(KilledBySystem(out), reporter)
    assert result.status == "failed"
    assert "SIGKILL" in result.error and "run out of memory" in result.error
    assert "allocating 70 GB" in reporter.messages("error")[-1]
    assert list(tmp_path.iterdir()) == []
    assert f"removed the partial output {out}.part" in reporter.messages("info")


def _cancel_when_sleeping(reporter: RecordingReporter) -> None:
    def wait_then_cancel() -> None:
        deadline = time.monotonic() + 60
        while "sleeping in C" not in reporter.messages("info") and time.monotonic() < deadline:
            time.sleep(0.01)
        reporter.token.cancel()

    threading.Thread(target=wait_then_cancel, daemon=True).start()


@pytest.mark.parametrize("ignore_term", [False, True])
def test_cancel_escalates_past_a_native_sleep(tmp_path: Path, ignore_term: bool) -> None:
    reporter = RecordingReporter()
    _cancel_when_sleeping(reporter)
    out = tmp_path / "model.gguf"
    result = run_in_child(NativeSleep(out, ignore_term=ignore_term), reporter,
                          ask_grace_s=0.3, term_grace_s=0.3)
    assert result.status == "cancelled" and "did not stop when asked" in result.error
    assert result.seconds < 60  # the 120 s sleep was cut short
    warnings = reporter.messages("warning")
    assert any("terminating" in w for w in warnings)
    assert any("killing" in w for w in warnings) == ignore_term
    assert list(tmp_path.iterdir()) == []


def test_describe_exit_names_the_status() -> None:
    assert describe_exit(3).startswith("the job's process exited with status 3")
    assert "SIGABRT" in describe_exit(-6) and "aborted" in describe_exit(-6)


def test_the_entry_point_runs_a_job_child_for_a_frozen_build(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frozen build has no `python -m`: it starts itself with --job-child, which must speak
    the same protocol as the module."""
    import subprocess
    import sys

    from app.core import jobs_process
    from app.core.jobs_wire import dumps

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert jobs_process.child_command() == [sys.executable, "--job-child"]
    monkeypatch.undo()
    message = dumps({"event": "request", "request": encode(Echo(("a",)))}) + "\n"
    result = subprocess.run([sys.executable, "-c", "import sys; from app.__main__ import main; "
                             "sys.exit(main(['--job-child']))"], input=message,
                            capture_output=True, text=True, timeout=120,
                            env=jobs_process.child_environment())
    assert result.returncode == 0, result.stderr
    # stdin closed after the request: to the child its supervisor is gone, so it cancels
    assert '"text":"pid ' in result.stdout
    assert '"event":"result","status":"cancelled"' in result.stdout


def test_sets_and_bytes_cross_and_malformed_ones_are_wire_errors() -> None:
    value = {"s": {1, (2, "x")}, "f": frozenset({Path("/a")}), "b": b"\x00\xff"}
    assert decode(encode(value)) == value
    assert isinstance(decode(encode(value))["f"], frozenset)
    # What a broken or hostile child could send instead: every one is refused as a WireError
    # (which the supervisor reports), never a TypeError from deep inside decoding.
    for bad in ({"__set__": [{"__dict__": []}]}, {"__set__": [[[1]]]}, {"__set__": 5},
                {"__set__": "abc"}, {"__dict__": [[{"__dict__": []}, 1]]},
                {"__dict__": [[1, 2, 3]]}, {"__dict__": 7}, {"__tuple__": 3},
                {"__float__": "many"}, {"__float__": []}, {"__bytes__": "not base64!"},
                {"__bytes__": 12}):
        with pytest.raises(WireError):
            decode(bad)


def test_an_unreadable_result_fails_the_job_and_removes_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import sys

    from app.core import jobs_process

    part = tmp_path / "out.part"
    events = [{"event": "part", "path": str(part)},
              {"event": "result", "status": "done", "value": {"__set__": [{"__dict__": []}]}}]
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps(e) + "\n" for e in events))
    script = (f"import sys; sys.stdin.readline(); open({str(part)!r}, 'w').write('x'); "
              f"sys.stdout.write(open({str(lines)!r}).read()); sys.stdout.flush()")
    monkeypatch.setattr(jobs_process, "child_command", lambda: [sys.executable, "-c", script])
    result = run_in_child(Echo(("a",)), RecordingReporter())
    assert result.status == "failed" and "unreadable result" in (result.error or "")
    assert not part.exists()
