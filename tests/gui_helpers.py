"""Helpers shared by the GUI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def settle(qtbot: Any, window: Any, timeout: int = 60000) -> None:
    """Wait until the window's jobs and background estimates are all done."""
    qtbot.waitUntil(lambda: not window.queue.active() and not window.background.busy(),
                    timeout=timeout)


def open_window(qtbot: Any, settings: Any, folder: Path | None = None) -> Any:
    """A shown MainWindow on the test's settings, closed by pytest-qt after the test; with
    `folder`, that folder is added and scanned (and its fit estimates done) before it returns."""
    from app.gui.main_window import MainWindow

    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    if folder is not None:
        window.add_folder(folder)
    settle(qtbot, window)
    return window
