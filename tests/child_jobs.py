"""Test-only compute jobs that misbehave the ways real ones can, run in a child process."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from app.core.jobs import Reporter, atomic_output, check_cancel


@dataclass(frozen=True)
class Echo:
    """Reports progress, logs, streams pieces through `on_text` and returns a dataclass."""

    pieces: tuple[str, ...]
    out: Path | None = None
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    progress_unit: str = "items"
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return "echo"

    def run(self, reporter: Reporter) -> EchoResult:
        reporter.log("info", f"pid {os.getpid()}")
        for index, piece in enumerate(self.pieces):
            check_cancel(reporter)
            if self.on_text is not None:
                self.on_text(piece)
            reporter.progress(index + 1, len(self.pieces), piece)
        if self.out is not None:
            with atomic_output(self.out) as part:
                part.write_text("".join(self.pieces))
        return EchoResult("".join(self.pieces), os.getpid(), (1.5, float("inf")))


@dataclass(frozen=True)
class EchoResult:
    text: str
    pid: int
    numbers: tuple[float, ...]


@dataclass(frozen=True)
class Segfault:
    """Reads address 0 in C: SIGSEGV, as a crashing native library would."""

    progress_unit: str = "items"
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return "segfault"

    def run(self, reporter: Reporter) -> None:
        reporter.log("info", "about to read address 0")
        ctypes.string_at(0)


@dataclass(frozen=True)
class NativeSleep:
    """Starts writing an output, then sleeps in C, where no cancel check can run; with
    `ignore_term` it also ignores SIGTERM, so only SIGKILL ends it."""

    out: Path
    seconds: int = 120
    ignore_term: bool = False
    progress_unit: str = "items"
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return "native sleep"

    def run(self, reporter: Reporter) -> None:
        if self.ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with atomic_output(self.out) as part:
            part.write_bytes(b"partial")
            reporter.log("info", "sleeping in C")
            ctypes.CDLL(None).sleep(self.seconds)


@dataclass(frozen=True)
class KilledBySystem:
    """Writes part of an output, then is SIGKILLed as the kernel's OOM killer would."""

    out: Path
    progress_unit: str = "items"
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return "killed"

    def run(self, reporter: Reporter) -> None:
        with atomic_output(self.out) as part:
            part.write_bytes(b"partial")
            print("native library: allocating 70 GB", flush=True)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class FailsWithOption:
    """Fails as a model llama.cpp cannot run fails: the remedy is an option of the job."""

    progress_unit: str = "items"

    @property
    def title(self) -> str:
        return "fails with an option"

    def run(self, reporter: Reporter) -> None:
        from app.core.errors import OptionFact, UnsupportedError

        raise UnsupportedError("llama.cpp does not know this architecture",
                               hint="run it in transformers",
                               option=OptionFact("backend", "transformers"))


@dataclass(frozen=True)
class FailsWithOptionInChild(FailsWithOption):
    runs_in_child_process: ClassVar[bool] = True
