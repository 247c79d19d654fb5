"""A banner above the models table listing the `.part` outputs that stopped jobs left behind,
each with its size, its age and a Delete button.

Deleting asks first and runs off the UI thread. A part that a job of this window may be
writing right now gets no Delete button: the job owns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.core.formats.model_info import format_bytes
from app.core.formats.scan import IncompleteOutput, delete_incomplete_output
from app.gui.background import Background

VISIBLE_ROWS = 3  # more scroll: the table below stays the main thing


def format_age(seconds: float) -> str:
    if seconds < 90:
        return "just now"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min ago"
    hours = minutes / 60
    if hours < 36:
        return f"{hours:.0f} h ago"
    return f"{hours / 24:.0f} days ago"


def breakable(name: str) -> str:
    """`name` with a zero-width space after each separator, so a long file name wraps in a
    narrow window instead of widening it."""
    for separator in "-._/":
        name = name.replace(separator, separator + "\u200b")
    return name


def may_be_writing(request: Any, part: Path) -> bool:
    """Whether a job with this request could be writing `part`: its output's own `.part`
    (shards included), or for a job whose output is named when it runs, any part beside
    its source. A false yes only hides a Delete button until the job ends."""
    target = getattr(request, "target", None) or getattr(request, "output", None)
    if target is not None:
        target = Path(target)
        stem = target.name.split(".")[0]
        return part.parent in (target.parent, target) and part.name.startswith(stem)
    source = getattr(request, "source", None)
    if source is not None:
        source = Path(source)
        return part.parent in (source.parent, source)
    return False


def ask_to_delete(parent: QWidget, output: IncompleteOutput) -> bool:
    answer = QMessageBox.question(
        parent, "Delete incomplete output?",
        f"Delete {output.path.name} ({format_bytes(output.size_bytes)}) in "
        f"{output.path.parent}?\n\nA job stopped while writing it, so it is not a usable "
        "model. Running that job again writes a new one.",
        QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes,
        QMessageBox.StandardButton.Cancel)
    return answer == QMessageBox.StandardButton.Yes


class RowsBanner(QFrame):
    """A titled list of rows above the models table: at most VISIBLE_ROWS rows high (more
    scroll), each row a wrapped label and its buttons; hidden while empty."""

    def __init__(self, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.hide()
        self._list = QWidget()
        self._list_layout = QVBoxLayout(self._list)
        self._list_layout.setContentsMargins(0, 0, 0, 0)
        self._list_layout.addStretch(1)
        self._scroll = QScrollArea()
        self._scroll.setWidget(self._list)
        self._scroll.setWidgetResizable(True)
        self._scroll.setFrameShape(QFrame.Shape.NoFrame)
        self._scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.title)
        layout.addWidget(self._scroll)
        layout.addWidget(self.status)
        self.hide()

    def set_rows(self, rows: list[QWidget]) -> None:
        """Replace the rows; the list is as high as its rows up to VISIBLE_ROWS of two-line
        rows, so a long list never pushes the table out of a small window."""
        while self._list_layout.count() > 1:
            item = self._list_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.setParent(None)
                widget.deleteLater()
        for index, row in enumerate(rows):
            self._list_layout.insertWidget(index, row)
        line = self.fontMetrics().lineSpacing()
        button = QPushButton("Delete…").sizeHint().height()
        row_height = max(button, 2 * line) + self._list_layout.spacing()
        self._scroll.setFixedHeight(min(len(rows), VISIBLE_ROWS) * row_height)
        self.setVisible(bool(rows))


class _Row(QWidget):
    def __init__(self, output: IncompleteOutput, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.output = output
        age = (f", {format_age(time.time() - output.modified)}" if output.modified else "")
        where = output.path.parent.name or str(output.path.parent)
        self.label = QLabel(f"<b>{escape(breakable(output.path.name))}</b> — "
                            f"{format_bytes(output.size_bytes)}{age}, in "
                            f"{escape(breakable(where))}")
        self.label.setWordWrap(True)
        self.label.setToolTip(str(output.path))
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.setToolTip(f"Delete {output.path}")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.delete_button)

    def set_busy(self, busy: bool) -> None:
        """A part a running job is writing: no Delete, and why."""
        self.delete_button.setEnabled(not busy)
        self.delete_button.setText("Being written" if busy else "Delete…")


class IncompleteBanner(RowsBanner):
    """Leftover `.part` outputs from every scanned source; hidden when there are none."""

    deleted = Signal(str, object)  # source key, path

    def __init__(self, background: Background, is_busy: Callable[[Path], bool],
                 parent: QWidget | None = None) -> None:
        super().__init__("incomplete-banner", parent)
        self.background = background
        self.is_busy = is_busy
        self.confirm: Callable[[IncompleteOutput], bool] = lambda o: ask_to_delete(self, o)
        self._by_source: dict[str, tuple[IncompleteOutput, ...]] = {}
        self.rows: dict[Path, _Row] = {}

    def outputs(self) -> list[tuple[str, IncompleteOutput]]:
        seen: set[Path] = set()
        found = []
        for key, outputs in self._by_source.items():
            for output in outputs:
                if output.path not in seen:
                    seen.add(output.path)
                    found.append((key, output))
        return found

    def set_outputs(self, key: str, outputs: tuple[IncompleteOutput, ...]) -> None:
        """What the latest scan of source `key` found."""
        if outputs:
            self._by_source[key] = tuple(outputs)
        else:
            self._by_source.pop(key, None)
        self._rebuild()

    def _rebuild(self) -> None:
        found = self.outputs()
        self.rows = {}
        for key, output in found:
            row = _Row(output)
            row.delete_button.clicked.connect(
                lambda _checked=False, k=key, o=output: self.delete(k, o))
            self.rows[output.path] = row
        total = sum(o.size_bytes for _, o in found)
        self.title.setText(
            f"<b>{len(found)} incomplete output(s)</b>, {format_bytes(total)}: jobs stopped "
            "while writing these, so they are not usable models. Deleting them is safe.")
        self.set_rows(list(self.rows.values()))
        self.refresh_busy()

    def refresh_busy(self, *_: object) -> None:
        for path, row in self.rows.items():
            row.set_busy(self.is_busy(path))

    def delete(self, key: str, output: IncompleteOutput) -> None:
        if self.is_busy(output.path):
            self.refresh_busy()
            return
        if not self.confirm(output):
            return
        row = self.rows.get(output.path)
        if row is not None:
            row.delete_button.setEnabled(False)
            row.delete_button.setText("Deleting…")

        def done(_freed: int) -> None:
            self._forget(output.path)
            self.status.hide()
            self.deleted.emit(key, output.path)

        def failed(error: Exception) -> None:
            self.status.setText(f"Could not delete {output.path.name}: {error}")
            self.status.show()
            self.refresh_busy()
            self.deleted.emit(key, output.path)  # a rescan shows what is really there

        self.background.submit(f"delete-part:{output.path}",
                               lambda: delete_incomplete_output(output.path), done, failed)

    def _forget(self, path: Path) -> None:
        self._by_source = {k: tuple(o for o in v if o.path != path)
                           for k, v in self._by_source.items()}
        self._by_source = {k: v for k, v in self._by_source.items() if v}
        self._rebuild()
