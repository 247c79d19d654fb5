"""Streaming and safety: cancel, full disk, disk and memory prechecks, inputs never modified,
and peak memory that stays near one chunk."""

from __future__ import annotations

import errno
import sys
import threading
from pathlib import Path

import pytest
from bench.measure import run_measured

import factories
from app.core.convert import ConvertRequest, plan_conversion, writing
from app.core.convert.job import check_resources
from app.core.errors import InsufficientResourcesError
from app.core.jobs import RecordingReporter, part_path, run_job
from app.core.resources import DiskInfo


class CancelAfter(RecordingReporter):
    """Asks to cancel once `n` progress reports have arrived."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def progress(self, done: float, total: float, text: str = "") -> None:
        super().progress(done, total, text)
        if len(self.progress_calls) >= self.n:
            self.token.cancel()


@pytest.mark.parametrize("to", ["gguf", "hf"])
def test_cancel_midway_leaves_nothing(to: str, tiny_models: dict[str, Path],
                                      tiny_ggufs: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_models["mixtral"] if to == "gguf" else tiny_ggufs["moe-stacked"]
    target = tmp_path / ("out.gguf" if to == "gguf" else "out-hf")
    reporter = CancelAfter(5)
    result = run_job(ConvertRequest(source, target, "F16", to=to, device="cpu"), reporter)
    assert result.status == "cancelled" and result.exit_code == 1
    assert len(reporter.progress_calls) == 5  # stopped before the next chunk
    assert list(tmp_path.iterdir()) == []


class CancelledFromAnotherThread(RecordingReporter):
    """At the `n`-th progress report, another thread cancels; the job's thread waits for it,
    so the cancel lands while the job is in the middle of its work."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.reached = threading.Event()

    def progress(self, done: float, total: float, text: str = "") -> None:
        super().progress(done, total, text)
        if len(self.progress_calls) == self.n:
            self.reached.set()
            assert self.token._event.wait(10), "the other thread never cancelled"


def test_cancel_from_another_thread_is_prompt(tiny_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    reporter = CancelledFromAnotherThread(3)
    canceller = threading.Thread(target=lambda: reporter.reached.wait(60)
                                 and reporter.token.cancel())
    canceller.start()
    result = run_job(ConvertRequest(tiny_models["llama"], tmp_path / "x.gguf", "Q8_0",
                                    device="cpu"), reporter)
    canceller.join()
    assert result.status == "cancelled"
    assert len(reporter.progress_calls) == 3  # stopped before the next chunk
    assert not (tmp_path / "x.gguf").exists() and not part_path(tmp_path / "x.gguf").exists()


def test_full_disk_during_write_fails_cleanly(tiny_models: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = writing.write_bytes

    def filling(handle: object, data: object) -> None:
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, data)  # type: ignore[arg-type]

    monkeypatch.setattr(writing, "write_bytes", filling)
    target = tmp_path / "full.gguf"
    result = run_job(ConvertRequest(tiny_models["llama"], target, "Q8_0", device="cpu"),
                     RecordingReporter())
    assert result.status == "failed" and result.exit_code == 1
    assert result.error is not None and "disk is full" in result.error
    assert "\n" not in result.error
    assert list(tmp_path.iterdir()) == []


def test_no_disk_space_is_refused_before_writing(tiny_models: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core import resource_checks

    monkeypatch.setattr(resource_checks, "probe_disk",
                        lambda path: DiskInfo(Path(path), 10**9, 1000))
    plan = plan_conversion(tiny_models["llama"], tmp_path / "x.gguf", out_type="F16")
    with pytest.raises(InsufficientResourcesError, match="not enough disk space") as caught:
        check_resources(plan)
    assert caught.value.needed_bytes > plan.output_bytes
    result = run_job(ConvertRequest(tiny_models["llama"], tmp_path / "x.gguf", "F16",
                                    device="cpu"), RecordingReporter())
    assert result.status == "failed" and "disk space" in (result.error or "")
    assert list(tmp_path.iterdir()) == []


def test_too_little_ram_is_refused(tiny_models: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    plan = plan_conversion(tiny_models["llama"], tmp_path / "x.gguf", out_type="F16")
    with pytest.raises(InsufficientResourcesError, match="RAM"):
        check_resources(plan)


def test_inputs_are_never_modified(tiny_models: dict[str, Path], tiny_ggufs: dict[str, Path],
                                   tmp_path: Path) -> None:
    gguf_source = tiny_ggufs["moe-stacked"]
    before = factories.tree_digest(tiny_models["mixtral"], gguf_source)
    for source, target, kwargs in (
            (tiny_models["mixtral"], tmp_path / "a.gguf", {"out_type": "Q8_0"}),
            (gguf_source, tmp_path / "b.gguf", {"out_type": "Q8_0", "keep_type": "*norm*"}),
            (gguf_source, tmp_path / "c-hf", {"out_type": "BF16", "to": "hf"})):
        result = run_job(ConvertRequest(source, target, device="cpu", **kwargs),  # type: ignore[arg-type]
                         RecordingReporter())
        assert result.status == "done", result.error
    assert factories.tree_digest(tiny_models["mixtral"], gguf_source) == before


PEAK_SCRIPT = """
import json, sys
from pathlib import Path
from app.core.convert import ConvertRequest, plan_conversion
from app.core.jobs import NullReporter
request = ConvertRequest(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], device="cpu")
plan = request.plan()
request.run(NullReporter())
print(json.dumps({"estimate": plan.estimated_peak_bytes, "naive": plan.naive_peak_bytes}))
"""


def test_peak_memory_stays_near_one_chunk(tmp_path: Path) -> None:
    """A model larger than the working set converts with a peak far below its size."""
    import json

    source = factories.make_hf_model(tmp_path / "wide", "llama", vocab_size=32768,
                                     hidden_size=1024, intermediate_size=1024,
                                     num_hidden_layers=2, num_attention_heads=8,
                                     num_key_value_heads=8, with_tokenizer=False)
    size = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    assert size > 300 * 2**20
    run = run_measured([sys.executable, "-c", PEAK_SCRIPT, str(source),
                        str(tmp_path / "w.gguf"), "Q8_0"])
    plan = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.peak_rss < plan["naive"] - size // 2
    # The estimate is what the job check and the Fit tab show: too high refuses jobs that fit.
    assert plan["estimate"] * 0.8 < run.peak_rss < plan["estimate"] * 1.25
