"""A job's child process: `python -m app.core.jobs_child`, started by `jobs_process`.

It reads one request from stdin (a JSON line, see `jobs_wire`), runs it, and writes its events
and result to stdout as JSON lines. A `cancel` line on stdin, or stdin closing because the
supervisor is gone, asks the job to stop at its next step. Whatever native libraries print goes
to stderr, which the supervisor keeps the tail of; a crash there prints the Python stack too.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from app.core import jobs
from app.core.jobs import CancelToken, JobResult, LogLevel, run_job
from app.core.jobs_wire import (
    WireError,
    call_event,
    decode,
    dumps,
    loads,
    log_event,
    part_event,
    progress_event,
    result_event,
)

# Conversions report per chunk, generations per token; the window redraws ~20 times a second.
PROGRESS_INTERVAL_S = 0.05


class ChildReporter:
    """A Reporter that writes JSON events to the supervisor; callable from any thread."""

    def __init__(self, stream: IO[str], token: CancelToken) -> None:
        self.stream = stream
        self.token = token
        self._lock = threading.Lock()
        self._last_progress = 0.0

    def send(self, event: dict[str, Any]) -> None:
        line = dumps(event) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()

    def progress(self, done: float, total: float, text: str = "") -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL_S and (total <= 0 or done < total):
            return
        self._last_progress = now
        self.send(progress_event(float(done), float(total), text))

    def log(self, level: LogLevel, text: str) -> None:
        self.send(log_event(level, text))

    def cancelled(self) -> bool:
        return self.token.is_set()

    def callback(self, name: str) -> Any:
        return lambda *args: self.send(call_event(name, args))


def _listen_for_cancel(stdin: IO[str], token: CancelToken) -> None:
    for line in stdin:
        if line.strip() == "cancel":
            token.cancel()
    token.cancel()  # the supervisor closed the pipe or died: nobody wants the result


def main() -> int:
    faulthandler.enable(sys.stderr)
    # The messages keep the real stdout; fd 1 becomes stderr, so that what native code prints
    # cannot corrupt a message.
    messages = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    token = CancelToken()
    reporter = ChildReporter(messages, token)
    try:
        request_line = sys.stdin.readline()
        request = decode(loads(request_line).get("request"), reporter.callback)
    except WireError as exc:
        reporter.send(result_event(JobResult("failed", error=f"internal error: the job's "
                                             f"request could not be read ({exc})",
                                             exit_code=1)))
        return 1
    threading.Thread(target=_listen_for_cancel, args=(sys.stdin, token), daemon=True,
                     name="cancel-listener").start()
    jobs.part_observers.append(lambda part: reporter.send(part_event(Path(part))))
    result = run_job(request, reporter)
    try:
        event = result_event(result)
    except WireError as exc:
        event = result_event(JobResult("failed", error=f"internal error: the job's result "
                                       f"could not be sent back ({exc})", exit_code=1,
                                       seconds=result.seconds))
    reporter.send(event)
    messages.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
