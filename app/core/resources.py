"""RAM, swap, GPU and disk probes; cheap enough to poll every second.

GPUs are probed through NVML (nvidia-ml-py), the driver's own library, never through torch: the
window must not import torch or create a CUDA context. A machine without an NVIDIA driver
reports no GPU; a broken driver reports no GPU and the reason, instead of failing.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil


@dataclass(frozen=True)
class GPUInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Resources:
    ram_total: int
    ram_available: int
    swap_total: int
    swap_free: int
    gpus: tuple[GPUInfo, ...] = ()
    gpu_note: str | None = None  # why no GPU is listed, when that is not simply "none"
    disk: DiskInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ram_total_bytes": self.ram_total,
            "ram_available_bytes": self.ram_available,
            "swap_total_bytes": self.swap_total,
            "swap_free_bytes": self.swap_free,
            "gpus": [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes,
                      "free_bytes": g.free_bytes} for g in self.gpus],
            "gpu_note": self.gpu_note,
            "disk": None if self.disk is None else {
                "path": str(self.disk.path), "total_bytes": self.disk.total_bytes,
                "free_bytes": self.disk.free_bytes},
        }


def nvidia_driver_present() -> bool:
    """Cheap check for machines that cannot have an NVIDIA GPU (no driver at all)."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        if Path("/proc/driver/nvidia/version").exists():
            return True
    return shutil.which("nvidia-smi") is not None


# CUDA numbers GPUs fastest first unless told otherwise; NVML numbers them by PCI bus. Child
# processes get this so that `cuda:1` is the GPU NVML calls 1.
CUDA_DEVICE_ORDER = "PCI_BUS_ID"

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {}  # "module" once initialised, or "note" when it cannot be


def _nvml() -> tuple[Any | None, str | None]:
    """NVML, initialised once per process; or None and why (None: simply no NVIDIA GPU)."""
    with _nvml_lock:
        if "module" in _nvml_state or "note" in _nvml_state:
            return _nvml_state.get("module"), _nvml_state.get("note")
        try:
            import pynvml
        except ImportError:
            note = "nvidia-ml-py is not installed" if nvidia_driver_present() else None
            _nvml_state["note"] = note
            return None, note
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            absent = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                      pynvml.NVML_ERROR_NOT_FOUND)
            note = None if exc.value in absent else f"the NVIDIA driver did not answer ({exc})"
            _nvml_state["note"] = note
            return None, note
        except OSError as exc:  # a library that is there but cannot be loaded
            _nvml_state["note"] = f"the NVIDIA driver library cannot be loaded ({exc})"
            return None, _nvml_state["note"]
        _nvml_state["module"] = pynvml
        return pynvml, None


def _visible(indices: list[int], uuids: list[str]) -> list[int]:
    """The NVML indices CUDA_VISIBLE_DEVICES leaves to CUDA, in CUDA's order."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return indices
    chosen = []
    for item in (part.strip() for part in value.split(",")):
        if item.isdigit() and int(item) in indices:
            chosen.append(int(item))
        elif item and (match := [i for i, u in zip(indices, uuids, strict=True)
                                 if u.startswith(item) or u.startswith("GPU-" + item)]):
            chosen.append(match[0])
        else:
            break  # CUDA stops at the first entry it cannot use
    return chosen


def probe_gpus() -> tuple[tuple[GPUInfo, ...], str | None]:
    """Every NVIDIA GPU CUDA will see, with free memory now; or none and the reason.

    Asks the driver through NVML: no torch import and no CUDA context, so the window can poll
    it every second. No driver means no GPU, which is a normal state and has no reason.
    Indices are CUDA's under `CUDA_DEVICE_ORDER=PCI_BUS_ID` and `CUDA_VISIBLE_DEVICES`.
    """
    nvml, note = _nvml()
    if nvml is None:
        return (), note
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        gpus = []
        for cuda_index, index in enumerate(_visible(list(range(len(handles))), uuids)):
            memory = nvml.nvmlDeviceGetMemoryInfo(handles[index])
            gpus.append(GPUInfo(cuda_index, _text(nvml.nvmlDeviceGetName(handles[index])),
                                int(memory.total), int(memory.free)))
        return tuple(gpus), None
    except nvml.NVMLError as exc:  # a GPU fallen off the bus must read as "no GPU", not crash
        return (), f"the NVIDIA driver did not answer ({exc})"


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def probe_disk(path: str | Path) -> DiskInfo:
    """Free space of the file system that holds `path` (or its nearest existing parent)."""
    target = Path(path).expanduser().absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    usage = psutil.disk_usage(str(target))
    return DiskInfo(target, int(usage.total), int(usage.free))


def probe_resources(disk_path: str | Path | None = None, with_gpus: bool = True) -> Resources:
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    gpus, note = probe_gpus() if with_gpus else ((), None)
    return Resources(
        ram_total=int(memory.total),
        ram_available=int(memory.available),
        swap_total=int(swap.total),
        swap_free=int(swap.free),
        gpus=gpus,
        gpu_note=note,
        disk=probe_disk(disk_path if disk_path is not None else os.getcwd()),
    )
