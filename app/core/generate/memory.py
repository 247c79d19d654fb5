"""Peak memory of a job while it runs: process RSS sampled on a thread, CUDA peaks from torch."""

from __future__ import annotations

import sys
import threading
from types import TracebackType

import psutil

SAMPLE_SECONDS = 0.02


def _torch_cuda_ready() -> bool:
    """True when torch is already imported and CUDA initialised; never imports torch itself."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


class PeakMemory:
    """Context manager that records the highest RSS (and CUDA allocation) seen inside it.

    RSS is sampled every 20 ms, so a spike shorter than that can be missed; the RSS at entry
    and exit are always included. CUDA peaks come from torch's allocator counters, reset at
    entry (or starting from zero when CUDA first initialises inside the block), summed over
    the devices the job reports with `use_cuda_devices`; llama.cpp's own CUDA memory is not
    seen by them.
    """

    def __init__(self) -> None:
        self.peak_rss = 0
        self.peak_vram: int | None = None
        self.cuda_devices: tuple[int, ...] = ()
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _rss(self) -> int:
        try:
            return int(self._process.memory_info().rss)
        except psutil.Error:
            return 0

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.peak_rss = max(self.peak_rss, self._rss())

    def use_cuda_devices(self, devices: tuple[int, ...]) -> None:
        self.cuda_devices = tuple(sorted(set(self.cuda_devices) | set(devices)))

    def __enter__(self) -> PeakMemory:
        self.peak_rss = self._rss()
        if _torch_cuda_ready():
            import torch

            for index in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(index)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())
        if self.cuda_devices and _torch_cuda_ready():
            import torch

            self.peak_vram = sum(int(torch.cuda.max_memory_allocated(i))
                                 for i in self.cuda_devices)
