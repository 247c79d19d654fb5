from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.errors import BadInputError, FormatError, JobCancelled
from app.core.jobs import (
    RecordingReporter,
    atomic_output,
    check_cancel,
    part_path,
    run_job,
)


def test_atomic_output_renames_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out.gguf"
    with atomic_output(final) as part:
        assert part == part_path(final)
        part.write_bytes(b"data")
        assert not final.exists()
    assert final.read_bytes() == b"data"
    assert not part_path(final).exists()


def test_atomic_output_removes_part_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as part:
            part.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not final.exists() and not part_path(final).exists()


def test_atomic_output_folder_and_cancel(tmp_path: Path) -> None:
    final = tmp_path / "model-hf"
    reporter = RecordingReporter()
    reporter.token.cancel()
    with pytest.raises(JobCancelled):
        with atomic_output(final) as part:
            part.mkdir()
            (part / "config.json").write_text("{}")
            check_cancel(reporter)
    assert list(tmp_path.iterdir()) == []
    with atomic_output(final) as part:
        part.mkdir()
        (part / "config.json").write_text("{}")
    assert (final / "config.json").read_text() == "{}"


def test_atomic_output_never_overwrites_unless_asked(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    final.write_bytes(b"precious")
    with pytest.raises(BadInputError, match="already exists"):
        with atomic_output(final) as part:
            part.write_bytes(b"new")
    assert final.read_bytes() == b"precious"
    with atomic_output(final, overwrite=True) as part:
        part.write_bytes(b"new")
    assert final.read_bytes() == b"new"


def test_atomic_output_clears_a_stale_part(tmp_path: Path) -> None:
    final = tmp_path / "out.bin"
    part_path(final).write_bytes(b"left by a crash")
    with atomic_output(final) as part:
        assert not part.exists()
        part.write_bytes(b"ok")
    assert final.read_bytes() == b"ok"


@dataclass(frozen=True)
class _Steps:
    fail_with: Exception | None = None
    progress_unit: str = "items"

    @property
    def title(self) -> str:
        return "steps"

    def run(self, reporter: RecordingReporter) -> int:
        for step in range(3):
            check_cancel(reporter)
            reporter.progress(step + 1, 3, f"step {step}")
        if self.fail_with:
            raise self.fail_with
        return 42


def test_run_job_outcomes() -> None:
    reporter = RecordingReporter()
    done = run_job(_Steps(), reporter)
    assert (done.status, done.value, done.exit_code) == ("done", 42, 0)
    assert reporter.progress_calls[-1] == (3, 3, "step 2")

    bad = run_job(_Steps(FormatError("bad magic", path="x.gguf")), RecordingReporter())
    assert (bad.status, bad.exit_code) == ("failed", 2)
    assert bad.error == "x.gguf: bad magic"

    cancelled_reporter = RecordingReporter()
    cancelled_reporter.token.cancel()
    cancelled = run_job(_Steps(), cancelled_reporter)
    assert cancelled.status == "cancelled"
    assert cancelled_reporter.progress_calls == []

    bug_reporter = RecordingReporter()
    bug = run_job(_Steps(ZeroDivisionError("division by zero")), bug_reporter)
    assert bug.status == "failed" and "internal error (ZeroDivisionError" in bug.error
    assert any("Traceback" in line for line in bug_reporter.messages("debug"))
