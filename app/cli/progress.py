"""Console reporters: a progress line on stderr, or JSON lines for other programs."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from app.cli.options import cli_words
from app.core.errors import OptionFact
from app.core.jobs import CancelToken, JobRequest, JobResult, LogLevel, run_job

BAR_WIDTH = 28


class ConsoleReporter:
    """Draws a progress bar on a terminal (nothing when stderr is not one) and logs lines.

    With `json_lines`, every call becomes one JSON object on stdout instead, so a program can
    follow a job: {"event": "progress", "done": ..., "total": ..., "text": ...}.
    """

    def __init__(self, *, json_lines: bool = False, verbose: bool = False,
                 stream: TextIO | None = None, unit: str = "items") -> None:
        self.token = CancelToken()
        self.json_lines = json_lines
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.unit = unit
        self._last_draw = 0.0
        self._start = time.monotonic()
        self._drawn = False

    def progress(self, done: float, total: float, text: str = "") -> None:
        if self.json_lines:
            self._emit({"event": "progress", "done": done, "total": total, "text": text})
            return
        now = time.monotonic()
        if not self.stream.isatty() or (now - self._last_draw < 0.1 and done < total):
            return
        self._last_draw = now
        self.stream.write("\r" + self._bar(done, total, text)[: self._width()] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _bar(self, done: float, total: float, text: str) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        if total <= 0:
            return f"{done:>8.0f} {self.unit}  {text}"
        fraction = min(max(done / total, 0.0), 1.0)
        filled = int(fraction * BAR_WIDTH)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0
        speed = f"{rate / 1e6:.0f} MB/s" if self.unit == "bytes" else f"{rate:.1f} {self.unit}/s"
        return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%  "
                f"{speed}  ETA {int(eta) // 60}:{int(eta) % 60:02d}  {text}")

    @staticmethod
    def _width() -> int:
        import shutil

        return max(shutil.get_terminal_size((100, 20)).columns - 1, 20)

    def log(self, level: LogLevel, text: str) -> None:
        if self.json_lines:
            self._emit({"event": "log", "level": level, "text": text})
            if level != "error":
                return
        elif level == "debug" and not self.verbose:
            return
        self.end_line()
        prefix = "" if level == "info" else f"{level}: "
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()

    def cancelled(self) -> bool:
        return self.token.is_set()

    def word_option(self, option: OptionFact) -> str | None:
        return cli_words(option)

    def end_line(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def _emit(self, event: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


@contextmanager
def ctrl_c_cancels(token: CancelToken) -> Iterator[None]:
    """First Ctrl-C asks the job to stop cleanly between steps; a second one aborts."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if token.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        token.cancel()
        sys.stderr.write("\ncancelling (Ctrl-C again to abort)...\n")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_in_console(request: JobRequest, reporter: ConsoleReporter) -> JobResult:
    with ctrl_c_cancels(reporter.token):
        result = run_job(request, reporter)
    reporter.end_line()
    return result
