"""Status bar: live RAM, VRAM per GPU and free disk of the selected folder.

RAM and disk are polled on the UI thread (psutil answers in microseconds); GPUs are polled on a
thread of their own, because the first probe imports torch, which takes seconds.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from app.core.formats.model_info import format_bytes
from app.core.resources import (
    GPUInfo,
    nvidia_driver_present,
    probe_disk,
    probe_gpus,
    probe_resources,
)

GIB = 1024**3


class _GpuPoller(QThread):
    polled = Signal(object, object)  # tuple[GPUInfo, ...], note

    def __init__(self, interval_ms: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms

    def run(self) -> None:
        while not self.isInterruptionRequested():
            gpus, note = probe_gpus()
            self.polled.emit(gpus, note)
            for _ in range(max(self.interval_ms // 100, 1)):
                if self.isInterruptionRequested():
                    return
                self.msleep(100)


def _meter(tooltip: str) -> QProgressBar:
    bar = QProgressBar()
    bar.setRange(0, 1000)
    bar.setTextVisible(False)
    bar.setFixedSize(90, 12)
    bar.setToolTip(tooltip)
    return bar


def _short(path: Path) -> str:
    home = Path.home()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) and path != home \
        else "~" if path == home else str(path)


class ResourceStatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.ram_label = QLabel()
        self.ram_bar = _meter("RAM in use")
        self.vram_label = QLabel("VRAM: no GPU")
        self.vram_bar = _meter("VRAM in use, all GPUs")
        self.vram_bar.hide()
        self.disk_label = QLabel()
        self.addPermanentWidget(self.ram_label)
        self.addPermanentWidget(self.ram_bar)
        self.addPermanentWidget(self.vram_label)
        self.addPermanentWidget(self.vram_bar)
        self.addPermanentWidget(self.disk_label)
        self.disk_path: Path = Path.home()
        self.gpus: tuple[GPUInfo, ...] = ()
        self._timer = QTimer(self, interval=interval_ms)
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self._gpu_poller: _GpuPoller | None = None
        if nvidia_driver_present():
            self._gpu_poller = _GpuPoller(interval_ms * 2, self)
            self._gpu_poller.polled.connect(self._show_gpus)
            self._gpu_poller.start()
        self.refresh()

    def stop(self) -> None:
        self._timer.stop()
        if self._gpu_poller is not None:
            self._gpu_poller.requestInterruption()
            self._gpu_poller.wait(5000)

    def set_disk_path(self, path: Path) -> None:
        self.disk_path = path
        self.refresh()

    @Slot()
    def refresh(self) -> None:
        res = probe_resources(disk_path=None, with_gpus=False)
        used = res.ram_total - res.ram_available
        self.ram_label.setText(f"RAM {used / GIB:.1f} / {res.ram_total / GIB:.1f} GB")
        self.ram_bar.setValue(int(1000 * used / res.ram_total) if res.ram_total else 0)
        try:
            disk = probe_disk(self.disk_path)
            free = format_bytes(disk.free_bytes)
            self.disk_label.setText(f"Disk {_short(disk.path)}: {free} free")
        except OSError:
            self.disk_label.setText("Disk: unknown")

    @Slot(object, object)
    def _show_gpus(self, gpus: tuple[GPUInfo, ...], note: str | None) -> None:
        self.gpus = gpus
        self.vram_bar.setVisible(bool(gpus))
        total = sum(g.total_bytes for g in gpus)
        self.vram_bar.setValue(int(1000 * sum(g.used_bytes for g in gpus) / total) if total else 0)
        if not gpus:
            self.vram_label.setText("VRAM: no GPU" if note is None else "VRAM: unavailable")
            self.vram_label.setToolTip(note or "")
            return
        parts = [f"GPU{g.index} {g.used_bytes / GIB:.1f} / {g.total_bytes / GIB:.0f} GB"
                 for g in gpus]
        self.vram_label.setText("VRAM " + " · ".join(parts))
        self.vram_label.setToolTip("\n".join(g.name for g in gpus))
