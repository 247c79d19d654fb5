"""What desktop users expect: the window remembers itself, shortcuts reach the main actions,
palettes follow the system, quitting asks while jobs run, an About box with versions."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from gui_helpers import open_window
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QPalette

from app.core.jobs import Reporter, check_cancel
from app.core.resources import GPUInfo, Resources
from app.gui.about import about_text, gpu_lines
from app.gui.appearance import action_icon, palette_for
from app.gui.settings import AppSettings
from app.resource_files import resource_path


@dataclass(frozen=True)
class Waiting:
    release: threading.Event = field(default_factory=threading.Event, compare=False)
    progress_unit: str = "items"
    title: str = "Convert something → Q8_0"

    def run(self, reporter: Reporter) -> None:
        while not self.release.wait(0.01):
            check_cancel(reporter)


def test_the_window_remembers_its_layout(qtbot, settings: AppSettings) -> None:  # type: ignore[no-untyped-def]
    first = open_window(qtbot, settings)
    # The narrowest the window goes (it fits a 1024-pixel-wide screen); offscreen, a restored
    # window is also kept within the 800-pixel virtual screen, so a wider one would shrink.
    width = first.minimumSizeHint().width()
    assert width <= 1024
    first.resize(width, 620)
    first.splitter.setSizes([150, width - 500, 330])
    sizes = first.splitter.sizes()
    first.table.sortByColumn(2, Qt.SortOrder.DescendingOrder)
    first.close()
    second = open_window(qtbot, settings)
    assert (second.size().width(), second.size().height()) == (width, 620)
    assert second.splitter.sizes() == sizes
    header = second.table.horizontalHeader()
    assert header.sortIndicatorSection() == 2
    assert header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder


def test_shortcuts_reach_the_main_actions(qtbot, settings: AppSettings) -> None:  # type: ignore[no-untyped-def]
    window = open_window(qtbot, settings)
    shortcuts = {a.shortcut().toString() for menu in window.menuBar().findChildren(type(
        window.menuBar().actions()[0].menu())) for a in menu.actions()}
    for keys in ("Ctrl+O", "Ctrl+Shift+C", "Ctrl+T", "Ctrl+J", "Ctrl+Q"):
        assert keys in shortcuts, keys
    assert QKeySequence("Ctrl+F").toString() in shortcuts
    for action in (window.open_action, window.rescan_action, window.convert_action):
        assert not action.icon().isNull()  # icons on the main actions


def test_quitting_asks_while_a_job_runs(qtbot, settings: AppSettings) -> None:  # type: ignore[no-untyped-def]
    window = open_window(qtbot, settings)
    asked: list[list[str]] = []
    window.confirm_quit = lambda running: asked.append(running) or False
    job = Waiting()
    window.queue.submit(job)
    try:
        assert not window.close()  # the user said no: the window stays
        assert asked == [["Convert something → Q8_0"]] and window.isVisible()
    finally:
        job.release.set()
    qtbot.waitUntil(lambda: not window.queue.active(), timeout=5000)
    assert window.close() and len(asked) == 1  # nothing running: no question


def test_palettes_follow_the_scheme(qapp) -> None:  # type: ignore[no-untyped-def]
    dark = palette_for(Qt.ColorScheme.Dark)
    light = palette_for(Qt.ColorScheme.Light)
    assert dark.color(QPalette.ColorRole.Window).lightness() < 60
    assert dark.color(QPalette.ColorRole.Text).lightness() > 200
    assert light.color(QPalette.ColorRole.Window).lightness() > 200


def test_about_names_the_libraries_and_gpus() -> None:
    text = about_text(None)
    for name in ("torch", "transformers", "gguf", "llama.cpp"):
        assert name in text
    assert metadata.version("gguf") in text and metadata.version("torch") in text
    gpu = GPUInfo(0, "NVIDIA H200", 141 * 1024**3, 140 * 1024**3)
    resources = Resources(24 * 1024**3, 20 * 1024**3, 0, 0, gpus=(gpu,))
    assert gpu_lines(resources) == ["GPU 0: NVIDIA H200, 141.0 GiB"]
    assert gpu_lines(Resources(1, 1, 0, 0)) == ["GPU: none"]


def test_resources_are_found_from_the_source_tree() -> None:
    assert resource_path("modelyard.svg").is_file()
    assert resource_path("style.qss").is_file()
    assert not action_icon("convert").isNull()
    assert Path(resource_path()).name == "resources"
