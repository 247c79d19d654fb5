"""CUDA without surprises: an out-of-memory error becomes a resource error with the numbers and
what to try, a device is chosen and checked before a job starts, and the allocator's cache goes
back to the driver after each job.

Choosing the device happens in the window too (it plans conversions), so it asks the driver
(NVML) and looks at the installed torch's files, never importing torch: that would load it and
create a CUDA context in the window. The job's child makes the final check with torch itself
(`torch_device`)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
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


# torch/version.py names the CUDA version the build was made for, or None for a CPU build:
# `cuda: Optional[str] = '12.8'` (older builds: `cuda = '11.8'`).
_TORCH_CUDA = re.compile(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)


def torch_build_has_cuda() -> bool:
    """Whether the installed torch was built with CUDA, read from its files without importing
    it (a CPU build cannot use a GPU however many the driver reports)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    version = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        return _TORCH_CUDA.search(version.read_text(encoding="utf-8")) is not None
    except OSError:
        return False


def resolve_device(device: str) -> str:
    """`cpu`, `cuda` or `cuda:N` for a job; `auto` is CUDA when the driver reports a GPU and
    torch was built with CUDA. A CUDA device without a GPU, or one that does not exist, is
    refused. Imports no torch (see the module's note)."""
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise OptionError(f"device {device!r} is not one of cpu, cuda, cuda:N or auto",
                          option=OptionFact("device"))
    if device == "cpu":
        return "cpu"
    from app.core.resources import probe_gpus

    gpus, _note = probe_gpus()
    usable = bool(gpus) and torch_build_has_cuda()
    if device == "auto":
        return "cuda" if usable else "cpu"
    if not gpus:
        raise OptionError("the CUDA device was chosen, but there is no CUDA GPU here",
                          hint="convert on the CPU", option=OptionFact("device", "cpu"))
    if not usable:
        raise OptionError("the CUDA device was chosen, but the installed torch is a CPU build "
                          "and cannot use the GPU", hint="install a CUDA build of torch, or "
                          "convert on the CPU", option=OptionFact("device", "cpu"))
    return check_cuda_device(device, len(gpus))


def torch_device(device: str) -> Any:
    """The torch device a job runs on, checked by torch itself: the job's child process makes
    this call, so a GPU the driver reports but CUDA cannot use fails with a sentence."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"the job was planned for {device}, but torch sees no usable CUDA GPU "
                          "(the driver may be too old for this torch build)",
                          hint="run on the CPU", option=OptionFact("device", "cpu"))
    return torch.device(device)


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
