"""The job queue: core jobs run one at a time per lane, reported through signals.

Compute jobs (conversions, generations, comparisons: requests with `runs_in_child_process`) run
in a child process that the compute lane's thread supervises, so a crash in native code or an
OOM kill fails the job, not the window, and a job stuck in a native call can still be stopped.
Quick read-only jobs (scans) run in this process on the other lane, so they never wait behind a
long conversion.

Widgets talk to the queue (submit, cancel) and listen to its signals; the workers never touch
a widget. Each job keeps its own log so the jobs panel can show it while it runs and after.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from app.core.errors import OptionFact, OptionWords
from app.core.jobs import (
    CancelToken,
    JobRequest,
    JobResult,
    LogLevel,
    run_job,
    runs_in_child_process,
)
from app.core.jobs_process import run_in_child
from app.gui.option_words import gui_words, job_words

JobState = str  # queued | running | done | failed | cancelled


@dataclass
class JobRecord:
    """What the GUI knows about one job; updated on the GUI thread only."""

    job_id: int
    title: str
    unit: str
    token: CancelToken
    request: JobRequest
    state: JobState = "queued"
    done: float = 0.0
    total: float = 0.0
    text: str = ""
    log: list[tuple[float, LogLevel, str]] = field(default_factory=list)
    log_path: Path | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: JobResult | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def rate(self) -> float | None:
        """Units per second since the job started."""
        if self.started_at is None or self.done <= 0:
            return None
        elapsed = (self.finished_at or time.monotonic()) - self.started_at
        return self.done / elapsed if elapsed > 0 else None

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        if not rate or self.total <= 0 or self.finished:
            return None
        return max(self.total - self.done, 0) / rate


class _QtReporter:
    """A Reporter that emits the worker's own signals (queued to the UI thread) from whichever
    thread reports: the worker's, or a child supervisor's watcher. It makes no connections:
    connecting signals on the worker thread while the UI thread delivered queued ones
    deadlocked once (the worker held the GIL inside connect, the UI thread waited for it)."""

    def __init__(self, worker: _Worker, job_id: int, token: CancelToken,
                 log_file: IO[str] | None, words: OptionWords = gui_words) -> None:
        self.words = words
        self.progressed = worker.progressed
        self.logged = worker.logged
        self.job_id = job_id
        self.token = token
        self.log_file = log_file
        self._log_lock = threading.Lock()
        self._last_progress = 0.0

    def progress(self, done: float, total: float, text: str = "") -> None:
        now = time.monotonic()
        # Jobs may report per tensor thousands of times a second; the UI needs ~20 updates/s.
        if now - self._last_progress < 0.05 and (total <= 0 or done < total):
            return
        self._last_progress = now
        self.progressed.emit(self.job_id, float(done), float(total), text)

    def log(self, level: LogLevel, text: str) -> None:
        if self.log_file is not None:
            with self._log_lock:
                self.log_file.write(f"{time.strftime('%H:%M:%S')} {level:<7} {text}\n")
                self.log_file.flush()
        self.logged.emit(self.job_id, level, text)

    def cancelled(self) -> bool:
        return self.token.is_set()

    def word_option(self, option: OptionFact) -> str | None:
        return self.words(option)


class _Worker(QObject):
    """Runs the jobs of one lane in order on its thread."""

    started = Signal(int)
    progressed = Signal(int, float, float, str)
    logged = Signal(int, str, str)
    finished = Signal(int, object)
    # How long a compute job has to stop after a cancel before SIGTERM, then before SIGKILL.
    ask_grace_s = 5.0
    term_grace_s = 3.0

    @Slot(int, object, object, object)
    def execute(self, job_id: int, request: JobRequest, token: CancelToken,
                log_path: Path | None) -> None:
        if token.is_set():
            self.finished.emit(job_id, JobResult("cancelled", error="cancelled before it started",
                                                 exit_code=1))
            return
        self.started.emit(job_id)
        log_file = _open_log(log_path)
        try:
            reporter = _QtReporter(self, job_id, token, log_file, job_words(request))
            reporter.log("info", request.title)
            if runs_in_child_process(request):
                try:
                    result = run_in_child(request, reporter, ask_grace_s=self.ask_grace_s,
                                          term_grace_s=self.term_grace_s)
                except Exception as exc:  # noqa: BLE001 - a supervisor bug must end the job
                    result = JobResult("failed", error=f"internal error supervising the job's "
                                                       f"process ({type(exc).__name__}: {exc})",
                                       exit_code=1)
            else:
                result = run_job(request, reporter)
            reporter.log("info", f"{result.status} in {result.seconds:.1f} s")
        finally:
            if log_file is not None:
                log_file.close()
        self.finished.emit(job_id, result)


def _open_log(path: Path | None) -> IO[str] | None:
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")
    except OSError:
        return None  # a job must not fail because its log cannot be kept


def log_file_name(job_id: int, title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-")[:60] or "job"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{job_id}-{slug}.log"


class JobQueue(QObject):
    """Owns the two lanes' threads; hands each job to its lane in submission order."""

    job_added = Signal(int)
    job_changed = Signal(int)
    job_logged = Signal(int, str, str)
    job_finished = Signal(int, object)  # job id, JobResult
    _dispatch_local = Signal(int, object, object, object)
    _dispatch_compute = Signal(int, object, object, object)

    def __init__(self, log_dir: Path | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.log_dir = log_dir
        self.jobs: dict[int, JobRecord] = {}
        self._ids = itertools.count(1)
        self._threads: list[QThread] = []
        self.local_worker = self._lane("modelyard-worker", self._dispatch_local)
        self.compute_worker = self._lane("modelyard-compute", self._dispatch_compute)

    def _lane(self, name: str, dispatch: Signal) -> _Worker:
        thread = QThread()
        thread.setObjectName(name)
        worker = _Worker()
        worker.moveToThread(thread)
        dispatch.connect(worker.execute)
        worker.started.connect(self._on_started)
        worker.progressed.connect(self._on_progress)
        worker.logged.connect(self._on_log)
        worker.finished.connect(self._on_finished)
        thread.start()
        self._threads.append(thread)
        return worker

    def submit(self, request: JobRequest) -> int:
        job_id = next(self._ids)
        record = JobRecord(job_id, request.title, request.progress_unit, CancelToken(), request)
        if self.log_dir is not None:
            record.log_path = self.log_dir / log_file_name(job_id, request.title)
        self.jobs[job_id] = record
        self.job_added.emit(job_id)
        dispatch = (self._dispatch_compute if runs_in_child_process(request)
                    else self._dispatch_local)
        dispatch.emit(job_id, request, record.token, record.log_path)
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
        """Drop a finished job's record (its log stays on disk)."""
        record = self.jobs.get(job_id)
        if record is not None and record.finished:
            del self.jobs[job_id]

    def active(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if not r.finished]

    def shutdown(self, timeout_ms: int = 10000) -> None:
        """Cancel everything and stop the threads; called when the window closes.

        A compute job's child is asked, then terminated, then killed, within the lane's grace
        periods; waiting for that keeps its partial output from being left behind."""
        self.cancel_all()
        for thread in self._threads:
            thread.quit()
        for thread in self._threads:
            thread.wait(timeout_ms)

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
