"""Run a job in a child process and supervise it from the calling thread.

A crash in native code (a segfault in llama.cpp, the kernel's OOM killer, an abort in a CUDA
kernel) then ends the child, not the caller; a job stuck in a long native call can still be
stopped; and the memory a job used goes back to the system when its process ends.

Cancel escalates: the child is asked (its reporter's `cancelled()` turns true), then sent
SIGTERM after `ask_grace_s`, then SIGKILL after `term_grace_s`. Whatever `.part` output the child
had started and could not remove is removed here. A child that dies is a failed job whose error
says how it ended (signal or exit status), with its last lines of output in the log.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app.core.errors import word_option
from app.core.jobs import JobRequest, JobResult, Reporter, option_words, remove_output
from app.core.jobs_wire import WireError, decode, dumps, encode, loads, result_from_event
from app.core.resources import CUDA_DEVICE_ORDER

CHILD_MODULE = "app.core.jobs_child"
CANCELLED_BY_FORCE = ("cancelled by the user; the job did not stop when asked, so its process "
                      "was ended; nothing was written")
POLL_S = 0.02

_CRASH_SIGNALS = {signal.SIGSEGV: "a crash in native code", signal.SIGBUS: "a crash in native "
                  "code", signal.SIGILL: "a crash in native code",
                  signal.SIGFPE: "a crash in native code",
                  signal.SIGABRT: "a library aborted on an internal error",
                  signal.SIGKILL: "the system may have run out of memory, or another program "
                  "killed it"}


def describe_exit(returncode: int) -> str:
    """One sentence for a child that ended without a result, with its exit status."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
            name = sig.name
        except ValueError:
            sig, name = None, f"signal {-returncode}"
        why = _CRASH_SIGNALS.get(sig, "ended by a signal") if sig is not None else \
            "ended by a signal"
        return (f"the job's process died ({name}, exit status {returncode}): {why}; "
                "the window is unaffected")
    return (f"the job's process exited with status {returncode} before it finished; "
            "the window is unaffected")


def child_command() -> list[str]:
    """This interpreter running the child module; a frozen build runs itself with a flag."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--job-child"]
    return [sys.executable, "-m", CHILD_MODULE]


def child_environment() -> dict[str, str]:
    """The caller's environment, with its import path, so the child imports the same code."""
    env = dict(os.environ)
    # This checkout of `app` first: an installed copy elsewhere must not answer for it.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root] + [p for p in sys.path if p and os.path.isdir(p)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("CUDA_DEVICE_ORDER", CUDA_DEVICE_ORDER)
    return env


@dataclass
class _Supervision:
    """The state of one child, shared by the reading thread and the watcher."""

    process: subprocess.Popen[str]
    reporter: Reporter
    ask_grace_s: float
    term_grace_s: float
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    parts: list[Path] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    forced: bool = False  # the child was sent SIGTERM or SIGKILL after a cancel

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def watch(self) -> None:
        """Escalate a cancel; make sure nothing of the child's group outlives it."""
        asked_at = termed_at = None
        exited_at = None
        while not self.done.wait(POLL_S):
            now = time.monotonic()
            if self.process.poll() is not None:
                # Children of the child may hold the pipes open; end them so reading stops.
                exited_at = exited_at or now
                if now - exited_at > 1.0:
                    self.signal_group(signal.SIGKILL)
                continue
            if asked_at is None and self.reporter.cancelled():
                asked_at = now
                self._ask()
            elif asked_at is not None and termed_at is None and now - asked_at > self.ask_grace_s:
                termed_at, self.forced = now, True
                self.reporter.log("warning", f"the job did not stop within "
                                             f"{self.ask_grace_s:g} s of being asked: terminating")
                self.signal_group(signal.SIGTERM)
            elif termed_at is not None and now - termed_at > self.term_grace_s:
                self.reporter.log("warning", "the job's process ignored SIGTERM: killing it")
                self.signal_group(signal.SIGKILL)
                termed_at = float("inf")

    def _ask(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("cancel\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.tail.append(line.rstrip("\n"))


def run_in_child(request: JobRequest, reporter: Reporter, *, ask_grace_s: float = 5.0,
                 term_grace_s: float = 3.0) -> JobResult:
    """Run `request.run(reporter)` in a child process; every outcome becomes a `JobResult`."""
    start = time.monotonic()
    try:
        message = dumps({"event": "request", "request": encode(request)}) + "\n"
    except WireError as exc:
        return JobResult("failed", error=f"internal error: {exc}", exit_code=1)
    try:
        process = subprocess.Popen(
            child_command(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            errors="replace", bufsize=1, start_new_session=True, env=child_environment())
    except OSError as exc:
        return JobResult("failed", error=f"could not start the job's process ({exc})",
                         exit_code=1)
    state = _Supervision(process, reporter, ask_grace_s, term_grace_s)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdin is not None
    helpers = [threading.Thread(target=state.watch, name="job-watcher", daemon=True),
               threading.Thread(target=state.read_stderr, args=(process.stderr,),
                                name="job-stderr", daemon=True)]
    for helper in helpers:
        helper.start()
    result: JobResult | None = None
    try:
        try:
            process.stdin.write(message)
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child died at once; its exit status says why
        for line in process.stdout:
            event = _event(line, reporter)
            if event is not None and event["event"] == "result":
                result = _result(event, reporter)
            elif event is not None:
                _dispatch(event, request, reporter, state)
        process.wait()
    except BaseException:
        state.signal_group(signal.SIGKILL)
        process.wait()
        raise
    finally:
        state.done.set()
        for helper in helpers:
            helper.join(timeout=2.0)
        for stream in (process.stdin, process.stdout, process.stderr):
            _close(stream)
    return _outcome(result, state, time.monotonic() - start)


def _close(stream: IO[str] | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass


def _event(line: str, reporter: Reporter) -> dict[str, Any] | None:
    try:
        return loads(line)
    except WireError as exc:
        reporter.log("debug", str(exc))
        return None


def _result(event: dict[str, Any], reporter: Reporter) -> JobResult:
    # A result that cannot be read fails the job (its partial outputs are removed) instead of
    # raising out of run_in_child, which promises a JobResult for every outcome.
    try:
        return result_from_event(event)
    except (KeyError, TypeError, ValueError, WireError) as exc:
        reporter.log("debug", f"unreadable result from the job's process ({exc})")
        return JobResult("failed", error=f"internal error: unreadable result ({exc})",
                         exit_code=1)


def _dispatch(event: dict[str, Any], request: JobRequest, reporter: Reporter,
              state: _Supervision) -> None:
    kind = event["event"]
    try:
        if kind == "progress":
            reporter.progress(float(event["done"]), float(event["total"]),
                              str(event.get("text", "")))
        elif kind == "log":
            reporter.log(event.get("level", "info"), str(event.get("text", "")))
        elif kind == "part":
            state.parts.append(Path(event["path"]))
        elif kind == "call":
            function = getattr(request, str(event["name"]), None)
            if callable(function):
                function(*decode(event.get("args", [])))
    except (KeyError, TypeError, ValueError, WireError) as exc:
        reporter.log("debug", f"unreadable message from the job's process ({exc})")


def _outcome(result: JobResult | None, state: _Supervision, seconds: float) -> JobResult:
    reporter = state.reporter
    if result is None or result.status != "done":
        for part in state.parts:
            if part.exists() or part.is_symlink():
                remove_output(part)
                reporter.log("info", f"removed the partial output {part}")
    if result is not None:
        words = option_words(reporter)
        error = word_option(result.error, result.option, words) if result.error else None
        return JobResult(result.status, result.value, error, result.exit_code, seconds,
                         result.option)
    returncode = state.process.returncode
    if state.forced:
        reporter.log("warning", CANCELLED_BY_FORCE)
        return JobResult("cancelled", error=CANCELLED_BY_FORCE, exit_code=1, seconds=seconds)
    sentence = describe_exit(returncode)
    reporter.log("error", sentence)
    lines = list(state.tail)[-20:]
    if lines:
        reporter.log("error", "its last lines of output:\n" + "\n".join(lines))
    return JobResult("failed", error=sentence, exit_code=1, seconds=seconds)
