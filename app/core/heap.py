"""Tell glibc's malloc what to do with the large blocks a job frees: keep them or give them back.

By default glibc maps blocks above a threshold on their own and returns them when freed, but it
raises that threshold to the size of each mapped block freed (up to 32 MiB), after which blocks
that size come from the heap. Both kinds of job pay for that adjustment in a different way:

- A conversion (`keep_freed_buffers`) allocates a few buffers of several MiB per chunk (raw
  bytes, float32 values, the quantizer's temporaries). Returned to the kernel, the next chunk's
  buffers fault every page back in, zero-filled: measured, that was ~45 % of the Q8_0
  quantizer's time. With a fixed mmap threshold of 32 MiB (glibc's largest) and a higher trim
  threshold, freed buffers are reused by the next chunk. What stays resident is the largest
  working set of one chunk per thread, which the peak-memory estimate counts already.
- A transformers forward pass (`return_freed_buffers`) frees each layer's activations of a few
  MiB while the KV cache it just appended stays. Once the threshold has risen, those blocks
  land on the heap between the cache's blocks, whose holes the next layers cannot always reuse:
  Modelyard's generation on a 24-layer llama at context 2048 peaked at 933-969 MiB in three
  processes with glibc's default policy, and at 864-865 MiB with the threshold fixed at 1 MiB,
  where every such block is mapped and returned (tests/bench/fit_accuracy.py). The memory
  estimate for transformers describes this process. The price is page faults on each new block.
Each call sets both thresholds, which also turns glibc's own adjustment off for the process.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

MIB = 1024 * 1024
# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class HeapPolicy:
    mmap_threshold: int  # blocks this size and larger are mapped on their own
    trim_threshold: int  # free memory at the heap's top beyond this goes back to the kernel


KEEP = HeapPolicy(mmap_threshold=32 * MIB, trim_threshold=128 * MIB)
# 128 KiB is glibc's own initial trim threshold.
RETURN = HeapPolicy(mmap_threshold=1 * MIB, trim_threshold=128 * 1024)


def keep_freed_buffers() -> bool:
    """Conversions: reuse freed chunk buffers. True when it took effect (False on other C
    libraries, where there is nothing to tune this way)."""
    return apply_heap_policy(KEEP)


def return_freed_buffers() -> bool:
    """Inference: map every block of 1 MiB or more on its own, so freed activations go back to
    the kernel instead of fragmenting the heap. True when it took effect."""
    return apply_heap_policy(RETURN)


def apply_heap_policy(policy: HeapPolicy) -> bool:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):  # not glibc, or not a POSIX system
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, policy.trim_threshold)) and bool(
        mallopt(_M_MMAP_THRESHOLD, policy.mmap_threshold))
