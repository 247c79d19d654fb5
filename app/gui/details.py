"""The details pane: Overview, Tensors and Problems of the selected model."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QStyle,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.formats.model_info import ModelInfo, TensorInfo, format_bytes, format_count
from app.gui.fit_tab import FitTab
from app.gui.test_tab import Gate, TestTab, no_gate
from app.gui.worker import JobQueue

AnyIndex = QModelIndex | QPersistentModelIndex
TENSOR_HEADERS = ("Name", "Type", "Shape", "Bytes")


class TensorTableModel(QAbstractTableModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._tensors: tuple[TensorInfo, ...] = ()

    def set_tensors(self, tensors: tuple[TensorInfo, ...]) -> None:
        self.beginResetModel()
        self._tensors = tensors
        self.endResetModel()

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._tensors)

    def columnCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(TENSOR_HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return TENSOR_HEADERS[section]
        if (orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole
                and TENSOR_HEADERS[section] == "Shape"):
            return ("As stored: a GGUF lists the fastest-varying dimension first (ne0×ne1), "
                    "safetensors rows first; the same as modelyard inspect --tensors")
        return None

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        tensor = self._tensors[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            # The order and spelling `modelyard inspect --tensors` prints.
            return (tensor.name, tensor.type, "×".join(map(str, tensor.shape)),
                    f"{tensor.n_bytes:,}")[column]
        if role == Qt.ItemDataRole.UserRole:
            return (tensor.name, tensor.type, tensor.shape, tensor.n_bytes)[column]
        if role == Qt.ItemDataRole.TextAlignmentRole and column == 3:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class OverviewTab(QScrollArea):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        body = QWidget()
        self.form = QFormLayout(body)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.setWidget(body)
        self.show_model(None)

    def show_model(self, model: ModelInfo | None) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        if model is None:
            self.form.addRow(QLabel("Select a model to see its details."))
            return
        for label, value in overview_rows(model):
            field = QLabel(value)
            field.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            field.setWordWrap(True)
            self.form.addRow(f"{label}:", field)


def overview_rows(model: ModelInfo) -> list[tuple[str, str]]:
    moe = "no"
    if model.moe:
        used = f", {model.moe.n_experts_used} used per token" if model.moe.n_experts_used else ""
        layout = {"stacked": ", stacked (blk.N.ffn_*_exps)",
                  "split": ", one tensor per expert",
                  "mixed": ", mixed layouts"}.get(model.moe.layout or "", "")
        moe = f"{model.moe.n_experts} experts{used}{layout}"
    rows = [
        ("Name", model.name),
        ("Path", str(model.path)),
        ("Format", model.format.upper() + (f", {len(model.files)} files"
                                          if len(model.files) > 1 else "")),
        ("Architecture", model.architecture or "unknown"),
        ("Parameters", f"{format_count(model.parameters)} ({model.parameters:,})"),
        ("Size on disk", format_bytes(model.file_size)),
        ("Quantization", model.quantization or "unknown"),
        ("Tensors", ", ".join(f"{t} {n}" for t, n in model.tensor_types.items()) or "none"),
        ("Context length", str(model.context_length or "unknown")),
        ("Layers", str(model.n_layers or "unknown")),
        ("Mixture of experts", moe),
        *([("Expert layout", model.moe.explanation)] if model.moe and model.moe.explanation
          else []),
        ("Tokenizer", "included" if model.has_tokenizer else "missing"),
    ]
    if model.repo_id:
        rows.insert(1, ("Hub repo", model.repo_id))
    return rows


class TensorsTab(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter = QLineEdit(placeholderText="filter tensors (name or type)…")
        self.filter.setClearButtonEnabled(True)
        self.model = TensorTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.count = QLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.table)
        layout.addWidget(self.count)
        self.proxy.rowsInserted.connect(self._update_count)
        self.proxy.modelReset.connect(self._update_count)
        self.proxy.layoutChanged.connect(self._update_count)
        self.filter.textChanged.connect(self._update_count)

    def show_model(self, model: ModelInfo | None) -> None:
        self.model.set_tensors(model.tensors if model else ())
        self._update_count()

    def _update_count(self) -> None:
        if self.model.rowCount() == 0:
            self.count.setText("Select a model to list its tensors.")
            return
        self.count.setText(f"{self.proxy.rowCount()} of {self.model.rowCount()} tensors")


# What the window offers for a problem the scan found, by its kind.
PROBLEM_ACTIONS = {
    "expert-layout": "Fix expert layout… (right-click the model in the table) writes a copy "
                     "with stacked experts",
}


class ProblemsTab(QWidget):
    """What the inventory found, and on request what the compatibility doctor finds."""

    doctor_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.doctor_button = QPushButton("Check compatibility")
        self.doctor_button.setToolTip("Compare what the model needs with what is installed: "
                                      "model class, transformers version, quantization "
                                      "kernels, llama.cpp architecture, missing tensors")
        self.doctor_status = QLabel()
        self.doctor_status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.doctor_button)
        row.addWidget(self.doctor_status, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addLayout(row)
        self.doctor_button.clicked.connect(self._doctor_clicked)
        self.model: ModelInfo | None = None

    def _icon(self, severity: str) -> QIcon:
        pixmap = {"error": QStyle.StandardPixmap.SP_MessageBoxCritical,
                  "warning": QStyle.StandardPixmap.SP_MessageBoxWarning}.get(
                      severity, QStyle.StandardPixmap.SP_MessageBoxInformation)
        return self.style().standardIcon(pixmap)

    def _add(self, severity: str, text: str, action: str | None = None) -> None:
        item = QListWidgetItem(self._icon(severity), text + (f"\n→ {action}" if action else ""))
        item.setToolTip(text)
        self.list.addItem(item)

    def show_model(self, model: ModelInfo | None) -> None:
        self.model = model
        self.list.clear()
        self.doctor_status.clear()
        self.doctor_button.setEnabled(model is not None)
        if model is None:
            self._add("info", "Select a model to see what was found in its files.")
            self.doctor_status.setText("The compatibility check needs a model selected.")
            return
        if not model.problems:
            self._add("info", "No problems found in the files.")
        for problem in model.problems:
            self._add("error" if problem.fatal else "warning", problem.text,
                      PROBLEM_ACTIONS.get(problem.kind or ""))

    def _doctor_clicked(self) -> None:
        self.doctor_button.setEnabled(False)
        self.doctor_status.setText("checking…")
        self.doctor_requested.emit()

    def show_findings(self, findings: list[tuple[str, str, str | None]], backend: str | None
                      ) -> None:
        """(severity, text, action) per finding from the doctor."""
        self.doctor_button.setEnabled(True)
        runs_with = f"runs with {backend}" if backend else "no installed runtime can run it"
        self.doctor_status.setText(f"Doctor: {len(findings)} finding(s); {runs_with}.")
        for severity, text, action in findings:
            self._add(severity, f"Doctor: {text}", action)

    def show_doctor_error(self, text: str) -> None:
        self.doctor_button.setEnabled(True)
        self.doctor_status.setText(f"Doctor failed: {text}")


class DetailsPane(QTabWidget):
    def __init__(self, queue: JobQueue, gate: Gate = no_gate,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.overview = OverviewTab()
        self.tensors = TensorsTab()
        self.fit = FitTab()
        self.problems = ProblemsTab()
        self.test = TestTab(queue, gate)
        self.addTab(self.overview, "Overview")
        self.addTab(self.tensors, "Tensors")
        self.addTab(self.fit, "Fit")
        self.addTab(self.problems, "Problems")
        self.addTab(self.test, "Test")
        self.model: ModelInfo | None = None
        self.show_model(None)

    def show_model(self, model: ModelInfo | None) -> None:
        self.model = model
        self.overview.show_model(model)
        self.tensors.show_model(model)
        self.problems.show_model(model)
        self.test.show_model(model)
        if model is None:
            self.fit.show_report(None)
        else:
            self.fit.show_pending()
        count = len(model.problems) if model else 0
        self.setTabText(self.indexOf(self.problems), f"Problems ({count})" if count else "Problems")
