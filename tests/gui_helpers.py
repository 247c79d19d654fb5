"""Helpers shared by the GUI tests."""

from __future__ import annotations

from typing import Any


def settle(qtbot: Any, window: Any, timeout: int = 60000) -> None:
    """Wait until the window's jobs and background estimates are all done."""
    qtbot.waitUntil(lambda: not window.queue.active() and not window.background.busy(),
                    timeout=timeout)
