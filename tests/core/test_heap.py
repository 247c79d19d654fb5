"""glibc heap policies: chunk buffers reused by conversions, activations returned by inference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Quantizes 1 Mi-value chunks to Q8_0 in two worker threads, as the executor's workers do, and
# prints the page faults of the last half of the chunks.
CHUNKS = """
import resource, sys, threading, torch
from app.core.heap import keep_freed_buffers
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
    # With glibc's defaults the same chunks fault ~42,000-45,000 pages: every chunk faults its
    # buffers in again. Tuned, it is 0 in most runs; in some a worker moves to another malloc
    # arena once and faults up to about one chunk's buffers there (up to 1,569 pages seen).
    assert _late_faults("tuned") < 4 * values_pages


# Frees a 4 MiB block, then allocates another: prints how many bytes of it were mapped on
# their own (mallinfo2's hblkhd) rather than taken from the heap.
SECOND_BLOCK = """
import ctypes, sys
from app.core.heap import return_freed_buffers
if sys.argv[1] == "tuned":
    assert return_freed_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc.mallinfo2.restype = Info
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="tunes glibc's malloc")
def test_inference_maps_large_blocks_after_one_was_freed() -> None:
    def mapped(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", SECOND_BLOCK, mode], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1])

    # glibc's default raises its mmap threshold to the freed block's size, so the second block
    # comes from the heap, where freed activations fragment it; tuned, it is mapped on its own.
    assert mapped("default") == 0
    assert mapped("tuned") >= 4 << 20
