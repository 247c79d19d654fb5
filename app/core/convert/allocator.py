"""Keep freed chunk buffers in the process instead of handing them back to the kernel.

Every chunk allocates a few buffers of several MiB (raw bytes, float32 values, the quantizer's
temporaries). glibc's malloc returns such blocks to the kernel when they are freed (mmap for
large blocks, trimming the heap top for the rest), and the next chunk's buffers then fault every
page back in, zero-filled: measured, that was ~45 % of the Q8_0 quantizer's time. With a fixed
mmap threshold of 32 MiB (glibc's largest) and a higher trim threshold, freed buffers are reused
by the next chunk. What stays resident is the largest working set of one chunk per thread, which
the peak-memory estimate counts already.
"""

from __future__ import annotations

import ctypes
import os
import threading

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024

_lock = threading.Lock()
_done: list[bool] = []


def keep_freed_buffers() -> bool:
    """Tune glibc's malloc once per process; True when it took effect (False on other C
    libraries, where there is nothing to tune this way)."""
    with _lock:
        if not _done:
            _done.append(_tune())
        return _done[0]


def _tune() -> bool:
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
    # The trim threshold first: setting either one turns glibc's own adjustment off.
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
