"""The process measurer the benchmarks and the memory tests use: it reports the command's own
peak RSS (never this process's, never an earlier command's), refuses a failed command, and
kills the command with it on a timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench.measure import ProcessFailed, mib, run_measured

MiB = 2**20


def touching(mebibytes: int) -> list[str]:
    """A Python command that holds `mebibytes` MiB resident, then prints a word."""
    return [sys.executable, "-c",
            f"block = bytearray({mebibytes} * 2**20)\n"
            "for i in range(0, len(block), 4096):\n"
            "    block[i] = 1\n"
            "print('held')"]


def test_the_peak_is_the_commands_own() -> None:
    # This process holds more than either command, as a benchmark holding a model does.
    held = bytearray(400 * MiB)
    for i in range(0, len(held), 4096):
        held[i] = 1
    large = run_measured(touching(160))
    small = run_measured(touching(16))
    assert large.stdout == "held\n"
    assert 160 * MiB <= large.peak_rss < 300 * MiB
    # Not the larger command's peak, as RUSAGE_CHILDREN read here would be.
    assert 16 * MiB <= small.peak_rss < 100 * MiB
    assert large.cpu_seconds > 0 and large.seconds > 0
    del held


def test_a_failed_command_gives_no_figures() -> None:
    with pytest.raises(ProcessFailed, match="went wrong") as failure:
        run_measured([sys.executable, "-c", "import sys; sys.exit('went wrong')"])
    assert failure.value.returncode == 1
    with pytest.raises(ProcessFailed) as failure:
        run_measured(["/nonexistent-command"])
    assert failure.value.returncode == 127


def test_a_timeout_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sleeper = [sys.executable, "-c", "import os, sys, time\n"
               "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
               "time.sleep(120)", str(pid_file)]
    with pytest.raises(subprocess.TimeoutExpired):
        run_measured(sleeper, timeout=3)
    stat = Path(f"/proc/{pid_file.read_text()}/stat")
    for _ in range(100):  # the kill is asynchronous: wait for the process to end
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the command outlived its timeout")


def test_sizes_print_in_mebibytes() -> None:
    assert mib(3 * MiB) == "3"
    assert mib(1.5 * MiB, 6, 1) == "   1.5"
