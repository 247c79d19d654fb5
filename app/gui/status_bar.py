"""Status bar: live RAM, VRAM per GPU and free disk of the selected folder.

Everything is probed on a thread of its own: the first GPU probe imports torch (seconds), and a
disk probe on a slow or stale network mount can block; neither may freeze the window.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot
from PySide6.QtWidgets import QLabel, QProgressBar, QStatusBar, QWidget

from app.core.formats.model_info import format_bytes
from app.core.resources import Resources, nvidia_driver_present, probe_resources

GIB = 1024**3


class _ResourcePoller(QThread):
    polled = Signal(object)  # Resources

    def __init__(self, interval_ms: int, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.disk_path = Path.home()  # set from the UI thread; a plain attribute swap
        self.with_gpus = nvidia_driver_present()

    def run(self) -> None:
        while not self.isInterruptionRequested():
            try:
                self.polled.emit(probe_resources(self.disk_path, with_gpus=self.with_gpus))
            except OSError:
                pass  # a vanished folder: the next poll, after the user picks another, works
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


def _short(path: Path, limit: int = 28) -> str:
    """The path as a person reads it: from ~, and only its last folders when it is long (the
    full path is in the tooltip)."""
    home = Path.home()
    text = "~/" + str(path.relative_to(home)) if path.is_relative_to(home) and path != home \
        else "~" if path == home else str(path)
    if len(text) > limit and len(path.parts) > 2:
        text = "…/" + path.name
    if len(text) > limit:
        text = "…" + text[-(limit - 1):]
    return text


class ResourceStatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None, interval_ms: int = 1000) -> None:
        super().__init__(parent)
        self.ram_label = QLabel("RAM …")
        self.ram_bar = _meter("RAM in use")
        self.vram_label = QLabel("VRAM: no GPU")
        self.vram_bar = _meter("VRAM in use, all GPUs")
        self.vram_bar.hide()
        self.disk_label = QLabel()
        for widget in (self.ram_label, self.ram_bar, self.vram_label, self.vram_bar,
                       self.disk_label):
            self.addPermanentWidget(widget)
        self.resources: Resources | None = None
        self._poller = _ResourcePoller(interval_ms, self)
        self._poller.polled.connect(self._show)
        self._poller.start()

    def stop(self) -> None:
        self._poller.requestInterruption()
        self._poller.wait(5000)

    def set_disk_path(self, path: Path) -> None:
        self._poller.disk_path = path

    @Slot(object)
    def _show(self, res: Resources) -> None:
        self.resources = res
        used = res.ram_total - res.ram_available
        self.ram_label.setText(f"RAM {used / GIB:.1f} / {res.ram_total / GIB:.1f} GiB")
        self.ram_bar.setValue(int(1000 * used / res.ram_total) if res.ram_total else 0)
        if res.disk is not None:
            self.disk_label.setText(f"Disk {_short(res.disk.path)}: "
                                    f"{format_bytes(res.disk.free_bytes)} free")
            self.disk_label.setToolTip(str(res.disk.path))
            if self.disk_label.width() < self.disk_label.sizeHint().width():
                self.reformat()  # a longer path: make room at once, not at the next resize
        gpus = res.gpus
        self.vram_bar.setVisible(bool(gpus))
        if not gpus:
            self.vram_label.setText("VRAM: no GPU" if res.gpu_note is None
                                    else "VRAM: unavailable")
            self.vram_label.setToolTip(res.gpu_note or "")
            return
        total = sum(g.total_bytes for g in gpus)
        self.vram_bar.setValue(int(1000 * sum(g.used_bytes for g in gpus) / total))
        self.vram_label.setText("VRAM " + " · ".join(
            f"GPU{g.index} {g.used_bytes / GIB:.1f} / {g.total_bytes / GIB:.0f} GiB"
            for g in gpus))
        self.vram_label.setToolTip("\n".join(g.name for g in gpus))
