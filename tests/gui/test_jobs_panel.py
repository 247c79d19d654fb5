"""The jobs panel: quiet logs, honest speed, the end of a job easy to see and to act on."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.core.formats.scan import ScanRequest
from app.core.jobs import Reporter, check_cancel
from app.gui.jobs_panel import JobsPanel, RateMeter
from app.gui.notify import Notifier
from app.gui.worker import JobQueue


@dataclass(frozen=True)
class Written:
    output: Path


@dataclass(frozen=True)
class Chatty:
    """Logs a debug line per step, then writes `output`; waits for `release` when given."""

    output: Path
    release: threading.Event | None = field(default=None, compare=False)
    progress_unit: str = "bytes"

    @property
    def title(self) -> str:
        return f"write {self.output.name}"

    def run(self, reporter: Reporter) -> Written:
        for step in range(5):
            check_cancel(reporter)
            reporter.log("debug", f"tensor {step}: copied")
            reporter.progress(step + 1, 5)
        while self.release is not None and not self.release.wait(0.01):
            check_cancel(reporter)
        reporter.log("info", "written")
        self.output.write_text("x")
        return Written(self.output)


def test_debug_lines_only_with_details(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    panel = JobsPanel(queue)
    qtbot.addWidget(panel)
    try:
        job = queue.submit(Chatty(tmp_path / "out.bin"))
        qtbot.waitUntil(lambda: queue.jobs[job].finished, timeout=5000)
        text = panel.log_view.toPlainText()
        assert "written" in text and "tensor 0" not in text
        panel.verbose.setChecked(True)
        assert "DEBUG: tensor 0: copied" in panel.log_view.toPlainText()
    finally:
        queue.shutdown()


def test_a_finished_job_shows_duration_output_and_its_folder(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    panel = JobsPanel(queue)
    qtbot.addWidget(panel)
    try:
        job = queue.submit(Chatty(tmp_path / "model-Q8_0.gguf"))
        qtbot.waitUntil(lambda: queue.jobs[job].finished, timeout=5000)
        item = panel._items[job]
        assert item.text(4).startswith("done in 0:0") and "→ model-Q8_0.gguf" in item.text(4)
        assert item.toolTip(4) == str(tmp_path / "model-Q8_0.gguf")
        assert panel.show_folder_button.isEnabled() and panel.test_button.isEnabled()
        asked: list[Path] = []
        panel.test_requested.connect(asked.append)
        panel.test_button.click()
        assert asked == [tmp_path / "model-Q8_0.gguf"]
    finally:
        queue.shutdown()


def test_a_rescan_does_not_take_the_log(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    queue = JobQueue()
    panel = JobsPanel(queue)
    qtbot.addWidget(panel)
    release = threading.Event()
    try:
        job = queue.submit(Chatty(tmp_path / "out.bin", release))
        assert panel.selected_job() == job
        release.set()
        qtbot.waitUntil(lambda: queue.jobs[job].finished, timeout=5000)
        scan = queue.submit(ScanRequest((tmp_path,)))
        qtbot.waitUntil(lambda: queue.jobs[scan].finished, timeout=5000)
        assert panel.selected_job() == job  # the user's job keeps the log
        second = queue.submit(Chatty(tmp_path / "second.bin"))
        assert panel.selected_job() == second  # a new job of the user's takes it
    finally:
        queue.shutdown()


def test_speed_counts_from_the_first_progress() -> None:
    meter = RateMeter()
    assert meter.rate(0, now=5.0) is None  # loading: no speed yet
    meter.update(1, now=100.0)  # first token after a long load
    assert meter.rate(1, now=100.2) is None
    assert meter.rate(11, now=102.0) == 5.0


def test_a_long_job_in_the_background_is_notified(qtbot) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QWidget

    window = QWidget()
    qtbot.addWidget(window)
    notifier = Notifier(window)
    assert not window.isActiveWindow()
    assert notifier.should_notify(12.0) and not notifier.should_notify(1.0)
    assert not notifier.should_notify(None)
    notifier.notify("Modelyard: Convert", "wrote model.gguf")
    assert notifier.sent == [("Modelyard: Convert", "wrote model.gguf")]


def test_the_window_shows_jobs_and_notifies_when_away(qtbot, settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      monkeypatch) -> None:
    from gui_helpers import open_window

    from app.gui import notify

    monkeypatch.setattr(notify, "NOTIFY_AFTER_SECONDS", 0.0)
    window = open_window(qtbot, settings)
    assert not window.jobs_dock.isVisible()
    job = window.queue.submit(Chatty(tmp_path / "model.gguf"))
    assert window.jobs_dock.isVisible()  # the first job the user starts opens the dock
    qtbot.waitUntil(lambda: window.queue.jobs[job].finished, timeout=5000)
    if window.isActiveWindow():
        assert window.notifier.sent == []
    else:
        assert window.notifier.sent == [("Modelyard: write model.gguf", "wrote model.gguf")]
