"""Leftover `.part` outputs in the window: listed with size and age, deleted after a yes (off
the UI thread, nothing else touched), never offered for deletion while a job writes them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gui_helpers import open_window, settle

from app.core.convert import ConvertRequest
from app.core.formats.scan import scan_paths
from app.core.jobs import Reporter, check_cancel
from app.gui.incomplete_banner import format_age, may_be_writing
from app.gui.settings import AppSettings
from app.gui.sources import folder_key
from factories import make_gguf


@dataclass(frozen=True)
class WritingJob:
    """Holds `target`'s part open until released, as a conversion does while it writes."""

    target: Path
    release: threading.Event = field(default_factory=threading.Event, compare=False)
    progress_unit: str = "bytes"
    title: str = "Convert (test)"

    def run(self, reporter: Reporter) -> None:
        self.target.with_name(self.target.name + ".part").write_bytes(b"\0" * 64)
        while not self.release.wait(0.02):
            check_cancel(reporter)


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    make_gguf(folder / "good.gguf")
    part = folder / "good-Q8_0.gguf.part"
    part.write_bytes(b"\0" * 2048)
    hour_ago = time.time() - 3 * 3600
    os.utime(part, (hour_ago, hour_ago))
    (folder / "merged.part").mkdir()
    (folder / "merged.part" / "model.safetensors").write_bytes(b"\0" * 100)
    return folder


def test_ages_and_who_may_be_writing() -> None:
    assert format_age(30) == "just now" and format_age(600) == "10 min ago"
    assert format_age(3 * 3600) == "3 h ago" and format_age(3 * 86400) == "3 days ago"
    out = Path("/m/model-Q8_0.gguf")
    assert may_be_writing(ConvertRequest(Path("/src"), out), Path("/m/model-Q8_0.gguf.part"))
    assert may_be_writing(ConvertRequest(Path("/src"), out),
                          Path("/m/model-Q8_0-00001-of-00002.gguf.part"))
    assert not may_be_writing(ConvertRequest(Path("/src"), out), Path("/m/other.gguf.part"))
    assert not may_be_writing(ConvertRequest(Path("/src"), out), Path("/x/model-Q8_0.gguf.part"))
    # No output named yet: it will go beside the source.
    assert may_be_writing(ConvertRequest(Path("/m/src.gguf")), Path("/m/src-Q8_0.gguf.part"))
    assert not may_be_writing(object(), Path("/m/x.gguf.part"))


def test_the_banner_lists_and_deletes_leftovers(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    window = open_window(qtbot, settings, folder)
    banner = window.leftovers
    assert banner.isVisible()
    assert "2 incomplete output(s)" in banner.title.text()
    part, merged = folder / "good-Q8_0.gguf.part", folder / "merged.part"
    assert set(banner.rows) == {part, merged}
    text = banner.rows[part].label.text().replace("\u200b", "")
    assert "good-Q8_0.gguf.part" in text and "2.0 KiB" in text and "3 h ago" in text
    assert window.table_model.rowCount() == 1  # the part is not a model row

    asked: list[Path] = []
    banner.confirm = lambda output: asked.append(output.path) or False
    banner.rows[part].delete_button.click()
    assert asked == [part] and part.exists()  # "no" deletes nothing

    banner.confirm = lambda output: True
    banner.rows[part].delete_button.click()
    qtbot.waitUntil(lambda: not part.exists() and part not in banner.rows, timeout=10000)
    settle(qtbot, window)  # the rescan that follows
    assert merged.exists() and (folder / "good.gguf").exists()
    assert set(banner.rows) == {merged}
    banner.rows[merged].delete_button.click()
    qtbot.waitUntil(lambda: not merged.exists(), timeout=10000)
    settle(qtbot, window)
    assert not banner.isVisible() and banner.rows == {}
    assert window.table_model.rowCount() == 1


def test_no_delete_for_a_part_a_job_is_writing(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    window = open_window(qtbot, settings, folder)
    job = WritingJob(folder / "out-Q4_0.gguf")
    writing = folder / "out-Q4_0.gguf.part"
    window.queue.submit(job)
    try:
        qtbot.waitUntil(writing.exists, timeout=10000)
        # This job holds the in-process lane that scans run on: the scan's finding is handed
        # to the banner directly.
        window.leftovers.set_outputs(folder_key(folder), scan_paths([folder]).incomplete)
        row = window.leftovers.rows[writing]
        assert not row.delete_button.isEnabled() and row.delete_button.text() == "Being written"
        window.leftovers.confirm = lambda output: True
        window.leftovers.delete("x", row.output)  # even asked directly, it refuses
        qtbot.wait(100)
        assert writing.exists()
        other = window.leftovers.rows[folder / "good-Q8_0.gguf.part"]
        assert other.delete_button.isEnabled()
    finally:
        job.release.set()
    qtbot.waitUntil(lambda: not window.queue.active(), timeout=10000)
    assert window.leftovers.rows[writing].delete_button.isEnabled()
