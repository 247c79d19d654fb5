"""The models table's view: columns sized to their contents, the name elided in the middle (two
quants of one model differ at the end of their names), and the least useful columns hidden
while the table is too narrow for them, so Fit never scrolls out of sight."""

from __future__ import annotations

from PySide6.QtCore import QAbstractItemModel, Qt, QTimer, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from app.gui.fit_badge import FitBadgeDelegate
from app.gui.models_table import COLUMN_INDEX, COLUMNS

NAME_MIN_WIDTH = 190
# Hidden first when the table is narrow; Name, Quant, Size and Fit always stay.
HIDE_ORDER = ("Arch", "Format", "Params", "Problems")


FIRST_LAUNCH = ("<b>No models yet</b><br>Open a folder of models, or drop a model file or "
                "folder anywhere on this window.")


class EmptyState(QWidget):
    """What the table says instead of showing nothing: how to begin, or why no row shows."""

    open_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.label = QLabel(FIRST_LAUNCH)
        self.label.setObjectName("empty-state")
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.button = QPushButton("Open folder…")
        self.button.clicked.connect(self.open_requested)
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        layout.addWidget(self.label)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(2)

    def set_text(self, text: str, offer_open: bool) -> None:
        self.label.setText(text)
        self.button.setVisible(offer_open)


class ModelsView(QTableView):
    def __init__(self, model: QAbstractItemModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setModel(model)
        self.empty = EmptyState(self.viewport())
        self.empty_reason = FIRST_LAUNCH
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setWordWrap(False)
        self.verticalHeader().hide()
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.setItemDelegateForColumn(COLUMN_INDEX["Fit"], FitBadgeDelegate(self))
        self._refit = QTimer(self, singleShot=True, interval=0)
        self._refit.timeout.connect(self.fit_columns)
        for signal in (model.modelReset, model.layoutChanged, model.rowsInserted,
                       model.rowsRemoved, model.dataChanged, model.headerDataChanged):
            signal.connect(self._refit.start)
        for signal in (model.modelReset, model.layoutChanged, model.rowsInserted,
                       model.rowsRemoved):
            signal.connect(self.update_empty_state)
        self.update_empty_state()

    def set_empty_reason(self, text: str, offer_open: bool = False) -> None:
        """What to say when no row shows (a filter that matches nothing, a source still
        being scanned); the first-launch text when there are no models at all."""
        self.empty_reason = text
        self.empty.set_text(text, offer_open)
        self.update_empty_state()

    def update_empty_state(self, *_: object) -> None:
        self.empty.setVisible(self.model().rowCount() == 0)
        self.empty.setGeometry(self.viewport().rect())

    def column_width_needed(self, column: int) -> int:
        return max(self.sizeHintForColumn(column),
                   self.horizontalHeader().sectionSizeHint(column))

    def fit_columns(self) -> None:
        """Show every column that fits beside a readable name; hide the rest in HIDE_ORDER."""
        available = self.viewport().width()
        widths = {i: self.column_width_needed(i) for i in range(1, len(COLUMNS))}
        total = sum(widths.values())
        hidden: set[int] = set()
        for title in HIDE_ORDER:
            if available - total >= NAME_MIN_WIDTH:
                break
            index = COLUMN_INDEX[title]
            hidden.add(index)
            total -= widths[index]
        for index in range(1, len(COLUMNS)):
            if self.isColumnHidden(index) != (index in hidden):
                self.setColumnHidden(index, index in hidden)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.empty.setGeometry(self.viewport().rect())
        self.fit_columns()
