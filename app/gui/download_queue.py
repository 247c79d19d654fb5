"""The download queue: Hub downloads on their own thread, so they run while a conversion runs.

It has the job queue's surface (jobs, submit, cancel, the same signals and `JobRecord`s), so
a `JobsPanel` shows it; the job runs on a plain thread that never touches a widget and reports
through queued signals. Downloads run one at a time: the network, not the CPU, is the limit.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QObject, Signal, Slot

from app.core.jobs import CancelToken, JobRequest, JobResult, LogLevel, run_job
from app.gui.worker import JobRecord, log_file_name


class _Relay(QObject):
    """Lives on the GUI thread; the download thread emits, Qt queues to the GUI thread."""

    started = Signal(int)
    progressed = Signal(int, float, float, str)
    logged = Signal(int, str, str)
    finished = Signal(int, object)


class _ThreadReporter:
    def __init__(self, relay: _Relay, job_id: int, token: CancelToken,
                 log_file: IO[str] | None) -> None:
        self.relay, self.job_id, self.token, self.log_file = relay, job_id, token, log_file
        self._last = 0.0

    def progress(self, done: float, total: float, text: str = "") -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and (total <= 0 or done < total):
            return
        self._last = now
        self.relay.progressed.emit(self.job_id, float(done), float(total), text)

    def log(self, level: LogLevel, text: str) -> None:
        if self.log_file is not None:
            self.log_file.write(f"{time.strftime('%H:%M:%S')} {level:<7} {text}\n")
            self.log_file.flush()
        self.relay.logged.emit(self.job_id, level, text)

    def cancelled(self) -> bool:
        return self.token.is_set()


class DownloadQueue(QObject):
    job_added = Signal(int)
    job_changed = Signal(int)
    job_logged = Signal(int, str, str)
    job_finished = Signal(int, object)  # job id, JobResult

    def __init__(self, log_dir: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.log_dir = log_dir
        self.jobs: dict[int, JobRecord] = {}
        self._ids = itertools.count(1)
        self._pending: queue.Queue[tuple[int, JobRequest, CancelToken, Path | None] | None] = \
            queue.Queue()
        self._relay = _Relay(self)
        self._relay.started.connect(self._on_started)
        self._relay.progressed.connect(self._on_progress)
        self._relay.logged.connect(self._on_log)
        self._relay.finished.connect(self._on_finished)
        self._thread = threading.Thread(target=self._work, name="modelyard-downloads",
                                        daemon=True)
        self._thread.start()

    def submit(self, request: JobRequest) -> int:
        job_id = next(self._ids)
        record = JobRecord(job_id, request.title, request.progress_unit, CancelToken(), request)
        if self.log_dir is not None:
            record.log_path = self.log_dir / log_file_name(job_id, request.title)
        self.jobs[job_id] = record
        self.job_added.emit(job_id)
        self._pending.put((job_id, request, record.token, record.log_path))
        return job_id

    def cancel(self, job_id: int) -> None:
        record = self.jobs.get(job_id)
        if record and not record.finished:
            record.token.cancel()
            record.text = "cancelling…"
            self.job_changed.emit(job_id)

    def cancel_all(self) -> None:
        for job_id in list(self.jobs):
            self.cancel(job_id)

    def forget(self, job_id: int) -> None:
        record = self.jobs.get(job_id)
        if record is not None and record.finished:
            del self.jobs[job_id]

    def active(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if not r.finished]

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel everything (a cancelled download keeps its partial file to resume)."""
        self.cancel_all()
        self._pending.put(None)
        self._thread.join(timeout_s)

    def _work(self) -> None:
        while (item := self._pending.get()) is not None:
            job_id, request, token, log_path = item
            if token.is_set():
                self._relay.finished.emit(job_id, JobResult(
                    "cancelled", error="cancelled before it started", exit_code=1))
                continue
            self._relay.started.emit(job_id)
            log_file = _open_log(log_path)
            try:
                reporter = _ThreadReporter(self._relay, job_id, token, log_file)
                reporter.log("info", request.title)
                result = run_job(request, reporter)
                reporter.log("info", f"{result.status} in {result.seconds:.1f} s")
            finally:
                if log_file is not None:
                    log_file.close()
            self._relay.finished.emit(job_id, result)

    @Slot(int)
    def _on_started(self, job_id: int) -> None:
        record = self.jobs[job_id]
        record.state = "running"
        record.started_at = time.monotonic()
        self.job_changed.emit(job_id)

    @Slot(int, float, float, str)
    def _on_progress(self, job_id: int, done: float, total: float, text: str) -> None:
        record = self.jobs[job_id]
        record.done, record.total = done, total
        if not record.token.is_set():
            record.text = text
        self.job_changed.emit(job_id)

    @Slot(int, str, str)
    def _on_log(self, job_id: int, level: str, text: str) -> None:
        self.jobs[job_id].log.append((time.time(), level, text))  # type: ignore[arg-type]
        self.job_logged.emit(job_id, level, text)

    @Slot(int, object)
    def _on_finished(self, job_id: int, result: Any) -> None:
        record = self.jobs[job_id]
        record.state = result.status
        record.result = result
        record.finished_at = time.monotonic()
        if result.status == "done" and record.total > 0:
            record.done = record.total
        record.text = result.error or ""
        self.job_changed.emit(job_id)
        self.job_finished.emit(job_id, result)


def _open_log(path: Path | None) -> IO[str] | None:
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")
    except OSError:
        return None  # a download must not fail because its log cannot be kept
