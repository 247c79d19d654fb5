"""Peak memory of a job while it runs: process RSS sampled on a thread, CUDA peaks from torch."""

from __future__ import annotations

import sys
import threading
from types import TracebackType

import psutil

SAMPLE_SECONDS = 0.02


class PeakMemory:
    """Context manager that records the highest RSS (and CUDA allocation) seen inside it.

    RSS is sampled every 20 ms, so a spike shorter than that can be missed; the RSS at entry
    and exit are always included.
    """

    def __init__(self, cuda_devices: tuple[int, ...] = ()) -> None:
        self.cuda_devices = cuda_devices
        self.peak_rss = 0
        self.peak_vram: int | None = None
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

    def add_cuda_devices(self, devices: tuple[int, ...]) -> None:
        """Track CUDA devices chosen after entering (when placement decides them)."""
        new = tuple(d for d in devices if d not in self.cuda_devices)
        self.cuda_devices += new
        self._reset_cuda(new)

    def _reset_cuda(self, devices: tuple[int, ...]) -> None:
        if not devices or "torch" not in sys.modules:
            return
        import torch

        for index in devices:
            torch.cuda.reset_peak_memory_stats(index)

    def __enter__(self) -> PeakMemory:
        self.peak_rss = self._rss()
        self._reset_cuda(self.cuda_devices)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._rss())
        if self.cuda_devices and "torch" in sys.modules:
            import torch

            self.peak_vram = sum(int(torch.cuda.max_memory_allocated(i))
                                 for i in self.cuda_devices)
