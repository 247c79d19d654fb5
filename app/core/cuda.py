"""CUDA without surprises: an out-of-memory error becomes a resource error with the numbers and
what to try, a device index is checked before a job starts, and the allocator's cache goes back
to the driver after each job. torch is only looked at when a job has imported it."""

from __future__ import annotations

import re
import sys
from typing import Any

from app.core.errors import InsufficientResourcesError, OptionError, OptionFact
from app.core.formats.model_info import format_bytes

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
# torch: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB
# of which 1.23 GiB is free." llama.cpp: "allocating 1234.56 MiB on device 0: cudaMalloc failed"
_TRIED = re.compile(r"(?:Tried to allocate|allocating) ([\d.]+) (B|KiB|MiB|GiB)")
_FREE = re.compile(r"of which ([\d.]+) (B|KiB|MiB|GiB) is free")
OOM_HINT = "offload fewer layers to the GPU, choose a smaller quant, or use a shorter context"


def is_cuda_oom(exc: BaseException) -> bool:
    text = str(exc)
    return (type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text
            or "cudaMalloc failed" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text)


def _amount(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def cuda_oom_error(exc: BaseException | str, what: str = "the job",
                   needed_bytes: int | None = None) -> InsufficientResourcesError:
    """The resource error for a CUDA allocation that failed: how much, how much was free."""
    text = str(exc)
    needed = needed_bytes or _amount(_TRIED, text) or 0
    free = _amount(_FREE, text)
    amounts = f"it needed {format_bytes(needed)} more" if needed else "an allocation failed"
    if free is not None:
        amounts += f" and {format_bytes(free)} was free"
    return InsufficientResourcesError(
        f"the GPU ran out of memory during {what}: {amounts}", needed_bytes=needed,
        available_bytes=free or 0, hint=OOM_HINT, option=OptionFact("n_gpu_layers"))


def check_cuda_device(device: str, n_gpus: int) -> str:
    """`cuda`, or `cuda:N` for a GPU that exists (numbered as NVML and CUDA number them)."""
    index = device.partition(":")[2]
    if device == "cuda":
        return device
    if not index.isdigit():
        raise OptionError(f"device {device!r} is not cpu, cuda or cuda:N",
                          option=OptionFact("device"))
    if int(index) >= n_gpus:
        raise OptionError(f"device {device!r}: there is no GPU {index} (GPUs here: "
                          f"{n_gpus})", option=OptionFact("device", "cuda"))
    return device


def empty_cuda_cache() -> None:
    """Give the caching allocator's unused blocks back, so the next job (or another program)
    sees the memory a finished job used as free."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken driver at cleanup must not fail a finished job
        pass
