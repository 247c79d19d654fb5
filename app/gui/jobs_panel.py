"""The jobs panel: one line per job (progress, speed, ETA, cancel; when done its duration and
output, with "Show in folder") and the selected job's log."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QTextCursor
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.formats.model_info import format_bytes
from app.core.formats.scan import ScanRequest
from app.gui.worker import JobQueue, JobRecord

COLUMNS = ("Job", "Progress", "Speed", "ETA", "State")
STATE_TEXT = {"queued": "queued", "running": "running", "done": "done", "failed": "failed",
              "cancelled": "cancelled"}


def format_rate(rate: float | None, unit: str) -> str:
    if rate is None:
        return ""
    if unit == "bytes":
        return f"{format_bytes(rate)}/s"
    return f"{rate:.1f} {unit}/s"


def job_output(record: JobRecord) -> Path | None:
    """The file or folder a finished job wrote, when it says."""
    value = record.result.value if record.result is not None else None
    # A result object, or its JSON form when the job ran in another process.
    output = value.get("output") if isinstance(value, dict) else getattr(value, "output", None)
    return Path(output) if output else None


def job_seconds(record: JobRecord) -> float | None:
    if record.started_at is None or record.finished_at is None:
        return None
    return record.finished_at - record.started_at


def is_background_job(record: JobRecord) -> bool:
    """Scans run on their own after every change; their rows must not take the log's focus."""
    return isinstance(record.request, ScanRequest)


class RateMeter:
    """Speed measured from a job's first progress report, not from its start: a generation
    loads its model first, and counting that time would halve the tokens per second."""

    def __init__(self) -> None:
        self._first: tuple[float, float] | None = None  # (monotonic time, done)

    def update(self, done: float, now: float | None = None) -> None:
        if self._first is None and done > 0:
            self._first = (now if now is not None else time.monotonic(), done)

    def rate(self, done: float, now: float | None = None) -> float | None:
        if self._first is None:
            return None
        started, first_done = self._first
        elapsed = (now if now is not None else time.monotonic()) - started
        if elapsed < 0.5 or done <= first_done:
            return None
        return (done - first_done) / elapsed


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class JobsPanel(QWidget):
    test_requested = Signal(object)  # Path of a finished job's output

    def __init__(self, queue: JobQueue, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue = queue
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(COLUMNS))
        self.tree.setRootIsDecorated(False)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Fixed)
        self.tree.setColumnWidth(1, 150)
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setPlaceholderText("The selected job's log appears here.")
        self.log_view.setMaximumBlockCount(20000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.open_log_button = QPushButton("Open log file")
        self.open_log_button.setEnabled(False)
        self.clear_button = QPushButton("Clear finished")
        self.show_folder_button = QPushButton("Show in folder")
        self.show_folder_button.setEnabled(False)
        self.show_folder_button.setToolTip("Open the folder holding the selected job's output")
        self.test_button = QPushButton("Test it")
        self.test_button.setEnabled(False)
        self.test_button.setToolTip("Select the selected job's output and open its Test tab")
        self.verbose = QCheckBox("Details")
        self.verbose.setToolTip("Show the per-tensor debug lines in the log")

        # Two rows: the panel also sits in the Hub view, which must fit a 1024-pixel-wide window
        # beside the sources and the details.
        job_buttons = QHBoxLayout()
        job_buttons.addWidget(self.cancel_button)
        job_buttons.addWidget(self.show_folder_button)
        job_buttons.addWidget(self.test_button)
        job_buttons.addStretch(1)
        log_buttons = QHBoxLayout()
        log_buttons.addWidget(self.open_log_button)
        log_buttons.addWidget(self.verbose)
        log_buttons.addStretch(1)
        log_buttons.addWidget(self.clear_button)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.tree)
        left_layout.addLayout(job_buttons)
        left_layout.addLayout(log_buttons)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.log_view)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.splitter = splitter
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

        self._items: dict[int, QTreeWidgetItem] = {}
        self._bars: dict[int, QProgressBar] = {}
        self._meters: dict[int, RateMeter] = {}
        queue.job_added.connect(self._add)
        self.show_folder_button.clicked.connect(self._show_folder)
        self.test_button.clicked.connect(self._test_output)
        self.verbose.toggled.connect(self._selection_changed)
        queue.job_changed.connect(self._refresh)
        queue.job_logged.connect(self._logged)
        self.tree.currentItemChanged.connect(self._selection_changed)
        self.cancel_button.clicked.connect(self._cancel_selected)
        self.open_log_button.clicked.connect(self._open_log)
        self.clear_button.clicked.connect(self.clear_finished)
        # Speed and ETA move even when a job reports rarely.
        self._ticker = QTimer(self, interval=1000)
        self._ticker.timeout.connect(self._refresh_running)
        self._ticker.start()

    def selected_job(self) -> int | None:
        item = self.tree.currentItem()
        return None if item is None else int(item.data(0, Qt.ItemDataRole.UserRole))

    def _add(self, job_id: int) -> None:
        record = self.queue.jobs[job_id]
        item = QTreeWidgetItem([record.title, "", "", "", STATE_TEXT[record.state]])
        item.setData(0, Qt.ItemDataRole.UserRole, job_id)
        item.setToolTip(0, record.title)
        self.tree.addTopLevelItem(item)
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(0)
        bar.setTextVisible(True)
        bar.setFormat("queued")
        self.tree.setItemWidget(item, 1, bar)
        self._items[job_id] = item
        self._bars[job_id] = bar
        self._meters[job_id] = RateMeter()
        current = self.selected_job()
        # A job the user started takes the log, unless they are watching one still running.
        if current is None or (not is_background_job(record)
                               and self.queue.jobs[current].finished):
            self.tree.setCurrentItem(item)

    def _refresh(self, job_id: int) -> None:
        item = self._items.get(job_id)
        if item is None:
            return
        record = self.queue.jobs[job_id]
        bar = self._bars[job_id]
        if record.state == "running" and record.total <= 0:
            bar.setRange(0, 0)  # busy indicator: the job cannot know its total yet
        else:
            bar.setRange(0, 1000)
            fraction = record.done / record.total if record.total > 0 else (
                1.0 if record.state == "done" else 0.0)
            bar.setValue(int(fraction * 1000))
        bar.setFormat(f"{bar.value() / 10:.0f}%" if record.state == "running"
                      else STATE_TEXT[record.state])
        meter = self._meters.setdefault(job_id, RateMeter())
        meter.update(record.done)
        rate = meter.rate(record.done) if record.state == "running" else None
        item.setText(2, format_rate(rate, record.unit))
        # A generation's total is its token limit, which it rarely reaches: no ETA from it.
        eta = (max(record.total - record.done, 0) / rate
               if rate and record.total > 0 and record.unit != "tokens" else None)
        item.setText(3, format_eta(eta))
        item.setText(4, self._state_text(record))
        item.setToolTip(4, self._state_tooltip(record))
        if job_id == self.selected_job():
            self._update_buttons(record)

    @staticmethod
    def _state_text(record: JobRecord) -> str:
        state = STATE_TEXT[record.state]
        if record.state == "done":
            seconds = job_seconds(record)
            output = job_output(record)
            parts = [state + (f" in {format_eta(seconds)}" if seconds is not None else "")]
            if output is not None:
                parts.append(f"→ {output.name}")
            return " ".join(parts)
        return state if not record.text else f"{state}: {record.text}"

    @staticmethod
    def _state_tooltip(record: JobRecord) -> str:
        output = job_output(record) if record.state == "done" else None
        return str(output) if output is not None else record.text

    def _refresh_running(self) -> None:
        for record in self.queue.active():
            if record.state == "running":
                self._refresh(record.job_id)

    def _logged(self, job_id: int, level: str, text: str) -> None:
        if job_id == self.selected_job():
            self._append_line(level, text)

    def _append_line(self, level: str, text: str) -> None:
        if level == "debug" and not self.verbose.isChecked():
            return
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.log_view.appendPlainText(prefix + text)
        self.log_view.moveCursor(QTextCursor.MoveOperation.End)

    def _selection_changed(self, *_: object) -> None:
        job_id = self.selected_job()
        self.log_view.clear()
        if job_id is None:
            self.cancel_button.setEnabled(False)
            self.open_log_button.setEnabled(False)
            self.show_folder_button.setEnabled(False)
            self.test_button.setEnabled(False)
            return
        record = self.queue.jobs[job_id]
        for _stamp, level, text in record.log:
            self._append_line(level, text)
        self._update_buttons(record)

    def _update_buttons(self, record: JobRecord) -> None:
        self.cancel_button.setEnabled(not record.finished and not record.token.is_set())
        self.open_log_button.setEnabled(record.log_path is not None and
                                        record.log_path.exists())
        has_output = record.state == "done" and job_output(record) is not None
        self.show_folder_button.setEnabled(has_output)
        self.test_button.setEnabled(has_output)

    def _cancel_selected(self) -> None:
        job_id = self.selected_job()
        if job_id is not None:
            self.queue.cancel(job_id)

    def _open_log(self) -> None:
        job_id = self.selected_job()
        if job_id is not None and (path := self.queue.jobs[job_id].log_path):
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def _show_folder(self) -> None:
        job_id = self.selected_job()
        output = job_output(self.queue.jobs[job_id]) if job_id is not None else None
        if output is not None:
            folder = output if output.is_dir() else output.parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _test_output(self) -> None:
        job_id = self.selected_job()
        output = job_output(self.queue.jobs[job_id]) if job_id is not None else None
        if output is not None:
            self.test_requested.emit(output)

    def clear_finished(self) -> None:
        for job_id in [j for j, r in self.queue.jobs.items() if r.finished]:
            item = self._items.pop(job_id, None)
            self._bars.pop(job_id, None)
            self._meters.pop(job_id, None)
            if item is not None:
                self.tree.takeTopLevelItem(self.tree.indexOfTopLevelItem(item))
            self.queue.forget(job_id)
