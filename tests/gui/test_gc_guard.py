"""Cyclic garbage is collected on the GUI thread, never on a job's thread."""

from __future__ import annotations

import gc
import threading

from app.gui.gc_guard import GuiThreadGarbageCollector


class _Cycle:
    finalized_on: list[str] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.finalized_on.append(threading.current_thread().name)


def test_garbage_made_anywhere_is_collected_on_the_gui_thread(qtbot) -> None:  # type: ignore[no-untyped-def]
    was_enabled = gc.isenabled()
    gc.enable()
    guard = GuiThreadGarbageCollector(interval_ms=20)
    try:
        assert not gc.isenabled()
        _Cycle.finalized_on.clear()

        def job() -> None:
            _Cycle()
            # Far past the first threshold: with automatic collection on, this thread would
            # collect the cycle itself.
            _ = [[] for _ in range(20 * gc.get_threshold()[0])]

        worker = threading.Thread(target=job, name="job-thread")
        worker.start()
        worker.join()
        assert _Cycle.finalized_on == []
        qtbot.waitUntil(lambda: _Cycle.finalized_on != [], timeout=5000)
        assert _Cycle.finalized_on == [threading.main_thread().name]
        guard.stop()
        assert gc.isenabled()  # stopping hands collection back to the interpreter
    finally:
        guard.stop()
        if not was_enabled:
            gc.disable()
