"""Wall time, CPU time and peak RSS of one whole process, for the benchmarks and the tests that
measure memory, and the one way their tables print a size (MiB).

The command runs under a small launcher process that forks it, waits for it and then reads
getrusage(RUSAGE_CHILDREN). The launcher is fresh and has this one child, so the figures are the
command's (and its own children's) and never an earlier child's. Reading ru_maxrss in the
caller instead would be wrong twice: RUSAGE_CHILDREN keeps the largest peak of every child
ever waited for, and a child started by vfork or fork carries its parent's peak over exec, so
a benchmark holding a model would see its own memory. The launcher's own peak (an interpreter
that imports nothing) is below any Python command's, so it never shows.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = """
import os, resource, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"cannot run {command[0]}: {error}\\n")
    os._exit(127)
_, status = os.waitpid(pid, 0)
seconds = time.monotonic() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(report, "w") as handle:
    handle.write(f"{seconds!r} {usage.ru_utime!r} {usage.ru_stime!r} {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""

# ru_maxrss is in KiB on Linux and in bytes on macOS.
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall time, from fork to exit
    cpu_seconds: float  # user + system, all threads and child processes
    peak_rss: int  # bytes: the largest RSS the command or any of its children reached
    stdout: str
    stderr: str


class ProcessFailed(RuntimeError):
    """The measured command exited with an error; nothing it did is a figure."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command[:6])} ... exited with {returncode}:\n"
                         f"{stderr[-2000:]}")
        self.returncode = returncode
        self.stderr = stderr


def run_measured(command: Sequence[str], *, cwd: Path | str | None = None,
                 env: Mapping[str, str] | None = None,
                 timeout: float | None = None) -> Measured:
    """Run `command` to its end and measure it; ProcessFailed if it exits non-zero. Its output
    is captured as text. On a timeout or an interrupt the command is killed with the launcher,
    as one process group, and the exception propagates."""
    descriptor, name = tempfile.mkstemp(prefix="measure-", suffix=".txt")
    os.close(descriptor)
    report = Path(name)
    try:
        with subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *command],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=cwd, env=env, start_new_session=True) as process:
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except BaseException:
                # The command is the launcher's child: killing the launcher alone would leave
                # it running, holding the pipes open.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise
        if process.returncode:
            raise ProcessFailed(command, process.returncode, stderr)
        figures = report.read_text().split()
    finally:
        report.unlink(missing_ok=True)
    if len(figures) != 4:  # never hand out a figure that was not read
        raise RuntimeError(f"{' '.join(command[:6])} ... : the launcher reported no usage")
    seconds, user, system, maxrss = figures
    return Measured(float(seconds), float(user) + float(system), int(maxrss) * MAXRSS_UNIT,
                    stdout, stderr)


def mib(size: float, width: int = 0, decimals: int = 0) -> str:
    """A size in bytes as MiB (2**20 bytes), right-aligned in `width` characters."""
    return f"{size / 2**20:{width}.{decimals}f}"
