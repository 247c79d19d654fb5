"""Chunk buffers freed by one chunk are reused by the next instead of faulting back in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Quantizes 1 Mi-value chunks to Q8_0 in two worker threads, as the executor's workers do, and
# prints the page faults of the last half of the chunks.
CHUNKS = """
import resource, sys, threading, torch
from app.core.convert.allocator import keep_freed_buffers
from app.core.quant import quantize
if sys.argv[1] == "tuned":
    assert keep_freed_buffers()
torch.set_num_threads(1)
raw = torch.randn(512, 2048).to(torch.bfloat16)
faults = []
def work():
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        quantize(raw.to(torch.float32), "Q8_0")
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
workers = [threading.Thread(target=work) for _ in range(2)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(sum(faults[16:]))
"""


def _late_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHUNKS, mode], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="tunes glibc's malloc")
def test_buffers_of_later_chunks_do_not_fault_again() -> None:
    values_pages = 4 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # one chunk's float32 values
    # With glibc's defaults the same chunks fault ~45,000 pages (measured on glibc 2.36): every
    # chunk faults its buffers in again.
    assert _late_faults("tuned") < values_pages
