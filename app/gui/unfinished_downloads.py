"""A banner above the models table listing downloads that stopped before the end, each with
Resume (queued on the download queue; it continues where it stopped) and Discard.

Looking for them reads the HF cache and the download folders, so it runs off the UI thread, at
start and after each download job ends. A partial that a running download may be writing gets
neither button until that job ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QWidget,
)

from app.core.formats.model_info import format_bytes
from app.core.hub.unfinished import (
    UnfinishedDownload,
    discard_unfinished_download,
    find_unfinished_downloads,
)
from app.gui.background import Background
from app.gui.incomplete_banner import RowsBanner, breakable, format_age
from app.gui.worker import JobQueue


def ask_to_discard(parent: QWidget, download: UnfinishedDownload) -> bool:
    answer = QMessageBox.question(
        parent, "Discard unfinished download?",
        f"Delete the {format_bytes(download.done_bytes)} downloaded so far of "
        f"{download.label}?\n\nDownloading it again starts from the beginning.",
        QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes,
        QMessageBox.StandardButton.Cancel)
    return answer == QMessageBox.StandardButton.Yes


class _Row(QWidget):
    def __init__(self, download: UnfinishedDownload, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.download = download
        done = format_bytes(download.done_bytes)
        amount = f"{done} of {format_bytes(download.size)}" if download.size else done
        age = format_age(time.time() - download.modified)
        self.label = QLabel(f"<b>{escape(breakable(download.label))}</b> — {amount}, {age}")
        self.label.setWordWrap(True)
        self.label.setToolTip(str(download.partial))
        self.resume_button = QPushButton("Resume")
        self.resume_button.setVisible(download.request is not None)
        self.discard_button = QPushButton("Discard…")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.resume_button)
        layout.addWidget(self.discard_button)

    def set_busy(self, busy: bool) -> None:
        self.resume_button.setEnabled(not busy)
        self.discard_button.setEnabled(not busy)
        self.resume_button.setText("Downloading" if busy else "Resume")


class UnfinishedDownloadsBanner(RowsBanner):
    """Unfinished downloads; hidden when there are none."""

    resumed = Signal(object)  # the UnfinishedDownload whose request was queued

    def __init__(self, background: Background, downloads: JobQueue,
                 parent: QWidget | None = None) -> None:
        super().__init__("unfinished-downloads", parent)
        self.background = background
        self.downloads = downloads
        self.confirm: Callable[[UnfinishedDownload], bool] = lambda d: ask_to_discard(self, d)
        self.rows: dict[Path, _Row] = {}
        self._where: tuple[Path | None, tuple[Path, ...]] = (None, ())
        downloads.job_added.connect(self.refresh_busy)
        downloads.job_finished.connect(lambda *_: self.look())

    def look(self, cache_dir: Path | None = None, folders: list[Path] | None = None) -> None:
        """Look for unfinished downloads in the HF cache and the download folders (the last
        ones given when called without them)."""
        if folders is not None:
            self._where = (cache_dir, tuple(folders))
        cache, where = self._where
        self.background.submit("unfinished-downloads",
                               lambda: find_unfinished_downloads(cache, where), self.show_found)

    def show_found(self, found: list[UnfinishedDownload]) -> None:
        self.rows = {}
        for download in found:
            row = _Row(download)
            row.resume_button.clicked.connect(lambda _c=False, d=download: self.resume(d))
            row.discard_button.clicked.connect(lambda _c=False, d=download: self.discard(d))
            self.rows[download.partial] = row
        self.title.setText(f"<b>{len(found)} unfinished download(s)</b>: they stopped before "
                           "the end and can continue where they stopped.")
        self.set_rows(list(self.rows.values()))
        self.refresh_busy()

    def is_busy(self, download: UnfinishedDownload) -> bool:
        """Whether a download job that has not finished may be writing this partial."""
        for record in self.downloads.active():
            request = record.request
            if download.request is None:
                return True  # an unknown partial could be any running download's
            files = getattr(request, "files", None) or (getattr(request, "filename", None),)
            if getattr(request, "repo_id", None) == download.request.repo_id and (
                    download.request.filename in files or not any(files)):
                return True
        return False

    def refresh_busy(self, *_: object) -> None:
        for row in self.rows.values():
            row.set_busy(self.is_busy(row.download))

    def resume(self, download: UnfinishedDownload) -> None:
        if download.request is None or self.is_busy(download):
            return
        self.downloads.submit(download.request)
        self.resumed.emit(download)
        self.refresh_busy()

    def discard(self, download: UnfinishedDownload) -> None:
        if self.is_busy(download) or not self.confirm(download):
            return

        def failed(error: Exception) -> None:
            self.status.setText(f"Could not discard {download.label}: {error}")
            self.status.show()
            self.look()

        def done(_freed: int) -> None:
            self.status.hide()
            self.look()

        self.background.submit(f"discard:{download.partial}",
                               lambda: discard_unfinished_download(download), done, failed)
