"""RAM, swap, GPU and disk probes; cheap enough to poll every second.

torch is imported only when GPUs are asked for (it takes seconds to import), and a machine
without CUDA, or with a broken driver, reports no GPU and the reason instead of failing.
"""

from __future__ import annotations

import os
import shutil
import sys
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
    """Cheap check that spares importing torch (seconds) on machines that cannot have CUDA."""
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        if Path("/proc/driver/nvidia/version").exists():
            return True
    return shutil.which("nvidia-smi") is not None


def probe_gpus() -> tuple[tuple[GPUInfo, ...], str | None]:
    """Every CUDA GPU torch can see, with free memory now; or none and the reason."""
    if not nvidia_driver_present():
        return (), None
    try:
        import torch
    except ImportError:
        return (), "torch is not installed"
    try:
        if not torch.cuda.is_available():
            return (), None
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GPUInfo(index, torch.cuda.get_device_name(index), int(total), int(free)))
        return tuple(gpus), None
    except Exception as exc:  # noqa: BLE001 - a broken driver must read as "no GPU", not crash
        return (), f"CUDA is present but unusable: {exc}"


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
