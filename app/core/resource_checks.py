"""Refusals before a job writes anything: not enough disk for its output, not enough free RAM or
VRAM for its peak. Every job that writes weights (conversion, relayout, merge) asks here."""

from __future__ import annotations

from pathlib import Path

from app.core.errors import InsufficientResourcesError, OptionFact
from app.core.formats.model_info import format_bytes
from app.core.resources import probe_disk, probe_gpus

# Room left on the disk beyond the output: file systems misbehave when completely full.
DISK_MARGIN = 64 * 1024 * 1024


def require_disk(folder: Path, output_bytes: int, what: str = "the output") -> None:
    disk = probe_disk(folder)
    needed = output_bytes + DISK_MARGIN
    if disk.free_bytes < needed:
        raise InsufficientResourcesError(
            f"not enough disk space: {what} needs {format_bytes(needed)}, "
            f"{format_bytes(disk.free_bytes)} is free", needed_bytes=needed,
            available_bytes=disk.free_bytes, path=folder,
            hint="free some space or choose another output folder")


def require_memory(device: str, ram_bytes: int, vram_bytes: int, what: str = "the job") -> None:
    """VRAM on a CUDA device (`cuda`, `cuda:N`), then RAM, against what is free now.

    Free VRAM comes from the driver (NVML), not torch: the window checks plans too, and must
    not load torch or create a CUDA context."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        gpus, _problem = probe_gpus()
        gpu = next((g for g in gpus if g.index == index), None)
        free = gpu.free_bytes if gpu is not None else 0
        if free < vram_bytes:
            raise InsufficientResourcesError(
                f"not enough free VRAM: {what} needs about {format_bytes(vram_bytes)}, "
                f"{format_bytes(free)} is free", needed_bytes=vram_bytes,
                available_bytes=int(free), hint="close other GPU programs, or run on the CPU",
                option=OptionFact("device", "cpu"))
    import psutil

    available = int(psutil.virtual_memory().available)
    if available < ram_bytes:
        raise InsufficientResourcesError(
            f"not enough free RAM: {what} needs about {format_bytes(ram_bytes)}, "
            f"{format_bytes(available)} is available", needed_bytes=ram_bytes,
            available_bytes=available, hint="close other programs and try again")
