"""Jobs: the Reporter protocol, job requests and results, atomic output.

A job is a plain request object (a frozen dataclass) with a `title` and a `run(reporter)`
method. The job calls `reporter.progress/log` as it goes and `reporter.check_cancel()` between
steps (tensors, files); the GUI and the CLI provide reporters, the core never knows which.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from app.core.errors import (
    BadInputError,
    JobCancelled,
    ModelyardError,
    OptionFact,
    OptionWords,
)

LogLevel = Literal["debug", "info", "warning", "error"]
ProgressUnit = Literal["bytes", "items", "tokens"]


@runtime_checkable
class Reporter(Protocol):
    """What a running job may tell the outside world, and ask it."""

    def progress(self, done: float, total: float, text: str = "") -> None: ...

    def log(self, level: LogLevel, text: str) -> None: ...

    def cancelled(self) -> bool: ...


def check_cancel(reporter: Reporter) -> None:
    """Raise `JobCancelled` if the user asked to stop; call between steps."""
    if reporter.cancelled():
        raise JobCancelled()


class CancelToken:
    """Thread-safe cancel flag shared between a job and whoever may cancel it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class RecordingReporter:
    """Keeps every call; used by tests and as the base of the CLI and GUI reporters."""

    token: CancelToken = field(default_factory=CancelToken)
    progress_calls: list[tuple[float, float, str]] = field(default_factory=list)
    lines: list[tuple[LogLevel, str]] = field(default_factory=list)

    def progress(self, done: float, total: float, text: str = "") -> None:
        self.progress_calls.append((done, total, text))

    def log(self, level: LogLevel, text: str) -> None:
        self.lines.append((level, text))

    def cancelled(self) -> bool:
        return self.token.is_set()

    def messages(self, level: LogLevel | None = None) -> list[str]:
        return [text for lvl, text in self.lines if level is None or lvl == level]


class NullReporter:
    """A reporter for callers that want none of it (library use)."""

    def progress(self, done: float, total: float, text: str = "") -> None:
        pass

    def log(self, level: LogLevel, text: str) -> None:
        pass

    def cancelled(self) -> bool:
        return False


@runtime_checkable
class JobRequest(Protocol):
    """A unit of work the queue can run. Implementations are frozen dataclasses."""

    @property
    def title(self) -> str: ...

    @property
    def progress_unit(self) -> ProgressUnit: ...

    def run(self, reporter: Reporter) -> Any: ...


JobStatus = Literal["done", "failed", "cancelled"]


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    value: Any = None
    error: str | None = None
    exit_code: int = 0
    seconds: float = 0.0
    option: OptionFact | None = None  # the error's option, for a front end to word


def option_words(reporter: Reporter) -> OptionWords | None:
    """How the reporter's front end words options (its `word_option`), if it says."""
    return getattr(reporter, "word_option", None)


def run_job(request: JobRequest, reporter: Reporter) -> JobResult:
    """Run a request to completion and turn every outcome into a `JobResult`.

    Known errors become their one-line message; anything else is an internal error whose
    traceback goes to the job's log (debug level), never to a message box.
    """
    from app.core.cuda import cuda_oom_error, empty_cuda_cache, is_cuda_oom

    start = time.monotonic()
    try:
        value = request.run(reporter)
    except JobCancelled as exc:
        reporter.log("warning", str(exc))
        return JobResult("cancelled", error=str(exc), exit_code=1, seconds=time.monotonic() - start)
    except ModelyardError as exc:
        text = exc.worded(option_words(reporter))
        reporter.log("error", text)
        return JobResult("failed", error=text, exit_code=exc.exit_code,
                         seconds=time.monotonic() - start, option=exc.option)
    except MemoryError:
        text = "ran out of memory; close other programs or choose a smaller job"
        reporter.log("error", text)
        return JobResult("failed", error=text, exit_code=1, seconds=time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - the job boundary turns bugs into a readable result
        reporter.log("debug", traceback.format_exc())
        if is_cuda_oom(exc):
            error = cuda_oom_error(exc)
            text = error.worded(option_words(reporter))
            reporter.log("error", text)
            return JobResult("failed", error=text, exit_code=1,
                             seconds=time.monotonic() - start, option=error.option)
        text = f"internal error ({type(exc).__name__}: {exc}); the job log has the details"
        reporter.log("error", text)
        return JobResult("failed", error=text, exit_code=1, seconds=time.monotonic() - start)
    finally:
        empty_cuda_cache()
    return JobResult("done", value=value, seconds=time.monotonic() - start)


def runs_in_child_process(request: JobRequest) -> bool:
    """Compute jobs (they load torch, native runtimes, whole models) say so with a class
    attribute `runs_in_child_process = True`; the GUI runs them in a child process."""
    return bool(getattr(type(request), "runs_in_child_process", False))


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


# Called with each `.part` path as `atomic_output` starts writing it: a job's child process
# tells its supervisor, which removes the part if the child dies before it can.
part_observers: list[Callable[[Path], None]] = []


def remove_output(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


@contextmanager
def atomic_output(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield `FINAL.part` to write into (a file, or a folder the caller creates).

    On success the part is fsynced and renamed to `final`; on any exception, cancel included,
    the part is removed and `final` is untouched.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise BadInputError("output already exists", path=final,
                            hint="choose another name")
    if not final.parent.is_dir():
        raise BadInputError("output folder does not exist", path=final.parent)
    part = part_path(final)
    if part.exists():
        # A part is only ever ours: a crashed earlier run left it.
        remove_output(part)
    for observer in part_observers:
        observer(part)
    try:
        yield part
        if not part.exists():
            raise ModelyardError("the job produced no output", path=final)
        _fsync_tree(part)
        if final.exists():
            remove_output(final)
        os.replace(part, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        remove_output(part)
        raise
