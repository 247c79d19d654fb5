"""Short read-only work (estimates, probes) off the UI thread, beside the job queue.

Jobs that write or take long go through JobQueue, one at a time; a fit estimate must not wait
behind a ten-minute conversion, so it runs here on Qt's thread pool and comes back as a signal.
Only the latest request per key is delivered: a slider dragged across ten values shows the last.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot


class _Relay(QObject):
    finished = Signal(str, int, object, object)  # key, ticket, result, error


class _Task(QRunnable):
    def __init__(self, relay: _Relay, key: str, ticket: int, function: Callable[[], Any]) -> None:
        super().__init__()
        self.relay, self.key, self.ticket, self.function = relay, key, ticket, function

    def run(self) -> None:
        try:
            result, error = self.function(), None
        except Exception as exc:  # noqa: BLE001 - handed to the caller to show
            result, error = None, exc
        self.relay.finished.emit(self.key, self.ticket, result, error)


class Background(QObject):
    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(2)
        self._relay = _Relay()
        self._relay.finished.connect(self._finished)
        self._tickets = itertools.count(1)
        self._latest: dict[str, int] = {}
        self._callbacks: dict[int, tuple[Callable[[Any], None],
                                         Callable[[Exception], None] | None]] = {}

    def submit(self, key: str, function: Callable[[], Any], on_done: Callable[[Any], None],
               on_error: Callable[[Exception], None] | None = None) -> None:
        ticket = next(self._tickets)
        self._latest[key] = ticket
        self._callbacks[ticket] = (on_done, on_error)
        self._pool.start(_Task(self._relay, key, ticket, function))

    def wait(self, msecs: int = 10000) -> bool:
        return self._pool.waitForDone(msecs)

    def busy(self) -> bool:
        return self._pool.activeThreadCount() > 0 or bool(self._callbacks)

    @Slot(str, int, object, object)
    def _finished(self, key: str, ticket: int, result: Any, error: Any) -> None:
        on_done, on_error = self._callbacks.pop(ticket)
        if self._latest.get(key) != ticket:
            return  # superseded by a newer request for the same thing
        if error is None:
            on_done(result)
        elif on_error is not None:
            on_error(error)
