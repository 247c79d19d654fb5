"""Run Python's cyclic garbage collector on the GUI thread only.

Automatic collection runs in whichever thread happens to allocate past the threshold: a job's
thread in the middle of a conversion, say. If the garbage holds a Qt wrapper (a closed dialog
in a reference cycle), its C++ object is then destroyed off the GUI thread, which Qt does not
allow for widgets and which can crash the app long after the dialog closed. So automatic
collection is switched off and a timer on the GUI thread does the same work.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer


class GuiThreadGarbageCollector(QObject):
    def __init__(self, interval_ms: int = 500, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.check)
        self._timer.start(interval_ms)

    def check(self) -> int | None:
        """Collect the young objects, and older generations when their counters say so.

        The youngest generation is collected on every tick it holds anything: its counter
        drops as objects die, so waiting for it to pass its threshold here could miss a
        cycle the interpreter would have collected at the peak.
        """
        young, middle, old = gc.get_count()
        _, middle_limit, old_limit = gc.get_threshold()
        if young == 0 and middle <= middle_limit:
            return None
        generation = 0
        if middle > middle_limit:
            generation = 2 if old > old_limit else 1
        gc.collect(generation)
        return generation

    def stop(self) -> None:
        self._timer.stop()
        if self._was_enabled:
            gc.enable()
