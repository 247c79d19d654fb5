"""The models table: one row per model, sortable by real values, filterable by text and source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QColor

from app.core.estimate.verdict import Verdict
from app.core.formats.model_info import ModelInfo, format_bytes, format_count
from app.gui.fit_badge import FIT_ROLE, fit_short_text, fit_sort_key, fit_tooltip

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
MODEL_ROLE = Qt.ItemDataRole.UserRole + 2
SOURCE_ROLE = Qt.ItemDataRole.UserRole + 3
AnyIndex = QModelIndex | QPersistentModelIndex


def format_label(model: ModelInfo) -> str:
    if model.format == "pickle":
        return "HF pickle"
    label = model.format.upper()
    return f"{label} ×{len(model.files)}" if model.format == "gguf" and len(model.files) > 1 \
        else label


@dataclass(frozen=True)
class Column:
    title: str
    display: Callable[[ModelInfo], str]
    sort_key: Callable[[ModelInfo], Any]
    align_right: bool = False
    header: str = ""  # shown instead of the title when the title is too wide for the values

    @property
    def heading(self) -> str:
        return self.header or self.title


# What matters most comes first, so a narrow window hides the tail (see ModelsView).
COLUMNS: tuple[Column, ...] = (
    Column("Name", lambda m: m.name, lambda m: m.name.lower()),
    Column("Quant", lambda m: m.quantization or "?", lambda m: m.quantization or ""),
    Column("Size", lambda m: format_bytes(m.file_size), lambda m: m.file_size, align_right=True),
    # Display and sort come from the model's verdict, which the table model holds (see data()).
    Column("Fit", lambda m: "", lambda m: 0),
    Column("Params", lambda m: format_count(m.parameters) if m.parameters else "?",
           lambda m: m.parameters, align_right=True),
    Column("Arch", lambda m: m.architecture or "?", lambda m: m.architecture or ""),
    Column("Format", format_label, format_label),
    Column("Problems", lambda m: str(len(m.problems)) if m.problems else "",
           lambda m: (sum(p.fatal for p in m.problems), len(m.problems)), align_right=True,
           header="⚠"),
)
COLUMN_INDEX = {c.title: i for i, c in enumerate(COLUMNS)}


@dataclass(frozen=True)
class ModelRow:
    model: ModelInfo
    source: str  # the key of the source that found it


class ModelTableModel(QAbstractTableModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._rows: list[ModelRow] = []
        self._fits: dict[str, Verdict] = {}
        self.fit_context = ""  # "at 4096 tokens on this machine", for tooltips
        self.judge = "here"  # what the Fit column is judged for, shown in its header

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        column = COLUMNS[section]
        if role == Qt.ItemDataRole.DisplayRole:
            if column.title == "Fit":
                return "Fit here" if self.judge == "here" else f"Fit · {self.judge}"
            return column.heading
        if role == Qt.ItemDataRole.ToolTipRole:
            return (f"Where each model runs {self.fit_context}" if column.title == "Fit"
                    else column.title)
        return None

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self._rows[index.row()]
        column = COLUMNS[index.column()]
        model = row.model
        if column.title == "Fit":
            return self._fit_data(model, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return column.display(model)
        if role == SORT_ROLE:
            return column.sort_key(model)
        if role == MODEL_ROLE:
            return model
        if role == SOURCE_ROLE:
            return row.source
        if role == Qt.ItemDataRole.TextAlignmentRole and column.align_right:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column.title == "Problems" and model.problems:
                return "\n".join(f"• {p.text}" for p in model.problems)
            return str(model.path)
        if role == Qt.ItemDataRole.ForegroundRole and model.fatal_problems:
            return QColor("#c0392b")
        return None

    def _fit_data(self, model: ModelInfo, role: int) -> Any:
        verdict = self._fits.get(str(model.path))
        if role == Qt.ItemDataRole.DisplayRole:
            return fit_short_text(verdict)
        if role == SORT_ROLE:
            return fit_sort_key(verdict)
        if role == FIT_ROLE:
            return verdict
        if role == Qt.ItemDataRole.ToolTipRole:
            return fit_tooltip(verdict, self.fit_context)
        if role == MODEL_ROLE:
            return model
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignCenter)
        return None

    def set_fits(self, fits: dict[str, Verdict], context_text: str,
                 judge: str = "here") -> None:
        """Verdicts by model path for `judge`; models without one show as pending."""
        self._fits.update(fits)
        self.fit_context = context_text
        if judge != self.judge:
            self.judge = judge
            column = COLUMN_INDEX["Fit"]
            self.headerDataChanged.emit(Qt.Orientation.Horizontal, column, column)
        column = COLUMN_INDEX["Fit"]
        if self._rows:
            self.dataChanged.emit(self.index(0, column), self.index(len(self._rows) - 1, column))

    def set_source_models(self, source: str, models: Sequence[ModelInfo]) -> None:
        """Replace the rows a source found with a new scan's models."""
        self.beginResetModel()
        self._rows = [r for r in self._rows if r.source != source]
        self._rows.extend(ModelRow(m, source) for m in models)
        self.endResetModel()

    def remove_source(self, source: str) -> None:
        self.set_source_models(source, [])

    def models(self) -> list[ModelInfo]:
        return [r.model for r in self._rows]



class ModelFilterProxy(QSortFilterProxyModel):
    """Filters by free text (name, arch, quant, format, path) and by the selected source."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self._text = ""
        self._source: str | None = None

    def set_text(self, text: str) -> None:
        self.beginFilterChange()
        self._text = text.strip().lower()
        self.endFilterChange()

    def set_source(self, source: str | None) -> None:
        self.beginFilterChange()
        self._source = source
        self.endFilterChange()

    def source(self) -> str | None:
        return self._source

    def filterAcceptsRow(self, source_row: int, source_parent: AnyIndex) -> bool:
        index = self.sourceModel().index(source_row, 0, source_parent)
        if self._source is not None and index.data(SOURCE_ROLE) != self._source:
            return False
        if not self._text:
            return True
        model: ModelInfo = index.data(MODEL_ROLE)
        haystack = " ".join(str(x) for x in (model.name, model.architecture, model.quantization,
                                             format_label(model), model.path)).lower()
        return all(word in haystack for word in self._text.split())

    def lessThan(self, left: AnyIndex, right: AnyIndex) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        try:
            return bool(a < b)
        except TypeError:
            return str(a) < str(b)
