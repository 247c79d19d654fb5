"""The convert sheet's advanced panels: the importance matrix (a file, or one computed from a
calibration text), the per-tensor plan with the user's type overrides, and the size target.

Each panel holds what the user chose and says, in the window, why it is unavailable; the plan
that the choices give comes from the core (through the sheet's `show_plan`), never from here.
"""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.convert import ConversionPlan
from app.core.errors import OptionError
from app.core.formats.model_info import format_bytes
from app.core.quant.overrides import TypeOverrides, valid_override_types
from app.core.quant.size_target import parse_size
from app.gui.fit_badge import COLORS

CONTEXTS = (2048, 4096, 8192, 16384, 32768)
SHOWN_UNCOVERED = 4


def _wrapped(text: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _error(text: str) -> str:
    return f"<span style='color:{COLORS['none']}'>{text}</span>"


class ImportancePanel(QWidget):
    """None, a matrix file (GGUF or .dat), or one computed from a calibration text."""

    changed = Signal()
    compute_wanted = Signal(object)  # Path of the calibration text

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.none = QRadioButton("No importance matrix")
        self.from_file = QRadioButton("Use a matrix file:")
        self.from_text = QRadioButton("Compute one from a calibration text:")
        self.modes = QButtonGroup(self)
        for button in (self.none, self.from_file, self.from_text):
            self.modes.addButton(button)
        self.none.setChecked(True)
        self.file = QLineEdit(placeholderText="imatrix .gguf or .dat")
        self.text = QLineEdit(placeholderText="a plain text file, a few hundred KB")
        self.browse_file = QPushButton("Browse…")
        self.browse_text = QPushButton("Browse…")
        self.compute = QPushButton("Compute")
        self.reason = _wrapped()  # why the panel or the computing is unavailable
        self.status = _wrapped("A matrix weights each quantizer by how much each input "
                               "column matters, as llama-quantize does with one: less error "
                               "at the same size.")
        grid = QGridLayout()
        grid.addWidget(self.none, 0, 0, 1, 3)
        grid.addWidget(self.from_file, 1, 0)
        grid.addWidget(self.file, 1, 1)
        grid.addWidget(self.browse_file, 1, 2)
        grid.addWidget(self.from_text, 2, 0)
        grid.addWidget(self.text, 2, 1)
        text_buttons = QHBoxLayout()
        text_buttons.addWidget(self.browse_text)
        text_buttons.addWidget(self.compute)
        grid.addLayout(text_buttons, 2, 2)
        grid.setColumnStretch(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.reason)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._compute_reason: str | None = None
        self._reason: str | None = None
        self.modes.buttonToggled.connect(self._mode_changed)
        self.file.editingFinished.connect(self._file_edited)
        self.text.textChanged.connect(self._update_enabled)
        self.browse_file.clicked.connect(self._browse_file)
        self.browse_text.clicked.connect(self._browse_text)
        self.compute.clicked.connect(self._compute)
        self._update_enabled()

    # ---- what the sheet tells the panel --------------------------------------------------
    def set_unavailable(self, reason: str | None) -> None:
        """`reason` (shown in the panel) when no matrix applies to the chosen output."""
        self._reason = reason
        self._update_enabled()

    def set_compute_unavailable(self, reason: str | None) -> None:
        self._compute_reason = reason
        self._update_enabled()

    def use_file(self, path: Path) -> None:
        """A matrix computed by the job: chosen as the file."""
        self.file.setText(str(path))
        self.from_file.setChecked(True)
        self.changed.emit()

    def computing(self, text: str) -> None:
        self.compute.setEnabled(False)
        self.status.setText(text)

    def show_failure(self, text: str) -> None:
        self._update_enabled()
        self.status.setText(_error(text))

    def show_plan(self, plan: ConversionPlan | None, refused: str | None) -> None:
        """What the chosen matrix covers in the checked plan, or `refused`: why the core
        refused the matrix itself."""
        if self.path() is None:
            return
        if refused is not None:
            self.status.setText(_error(refused))
            return
        if plan is None:
            self.status.setText("Checked with the plan once the plan can be made.")
            return
        importance = plan.importance
        if importance is None:
            return
        line = next((n for n in plan.notes if n.startswith("importance matrix")), "")
        text = line[:1].upper() + line[1:] + "."
        if importance.uncovered:
            names = ", ".join(importance.uncovered[:SHOWN_UNCOVERED])
            more = len(importance.uncovered) - SHOWN_UNCOVERED
            text += (f" Quantized without it: {names}" + (f" and {more} more" if more > 0
                                                          else "") + ".")
        self.status.setText(text)

    # ---- what the user chose -------------------------------------------------------------
    def path(self) -> Path | None:
        if self._reason is not None or not self.from_file.isChecked():
            return None
        text = self.file.text().strip()
        return Path(text).expanduser() if text else None

    def missing(self) -> str | None:
        """Why the sheet cannot plan yet, from this panel."""
        if self._reason is not None or self.none.isChecked():
            return None
        if self.from_file.isChecked() and not self.file.text().strip():
            return "Choose the importance matrix file, or no matrix."
        if self.from_text.isChecked():
            return "Compute the importance matrix first, or choose no matrix."
        return None

    def _update_enabled(self, *_: object) -> None:
        available = self._reason is None
        for widget in (self.none, self.from_file, self.from_text, self.file, self.text,
                       self.browse_file, self.browse_text):
            widget.setEnabled(available)
        can_compute = available and self._compute_reason is None
        self.from_text.setEnabled(can_compute)
        self.text.setEnabled(can_compute)
        self.browse_text.setEnabled(can_compute)
        self.compute.setEnabled(can_compute and bool(self.text.text().strip()))
        reasons = [r for r in (self._reason, None if not available else self._compute_reason)
                   if r]
        self.reason.setText(" ".join(reasons))
        self.reason.setVisible(bool(reasons))
        if not can_compute and self.from_text.isChecked():
            self.none.setChecked(True)
        if not available and not self.none.isChecked():
            self.none.setChecked(True)

    def _mode_changed(self, _button: object, checked: bool) -> None:
        if checked:
            self._update_enabled()
            self.changed.emit()

    def _file_edited(self) -> None:
        if self.file.text().strip() and not self.from_file.isChecked():
            self.from_file.setChecked(True)  # emits changed
        else:
            self.changed.emit()

    def _browse_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Importance matrix", self.file.text(),
                                              "Importance matrix (*.gguf *.dat);;All files (*)")
        if name:
            self.use_file(Path(name))

    def _browse_text(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Calibration text", self.text.text(),
                                              "Text (*.txt *.md);;All files (*)")
        if name:
            self.text.setText(name)
            self.from_text.setChecked(True)

    def _compute(self) -> None:
        text = self.text.text().strip()
        if text:
            self.from_text.setChecked(True)
            self.compute_wanted.emit(Path(text).expanduser())


AS_PLANNED = "as the mix chooses"


class TensorPanel(QWidget):
    """Every tensor of the checked plan (name, shape as `inspect` prints it, type, size), and
    the user's per-tensor types on top of the mix."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTreeWidget()
        self.table.setHeaderLabels(["Tensor", "Shape", "Type", "Size", "Matrix"])
        self.table.setRootIsDecorated(False)
        self.table.setUniformRowHeights(True)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3, 4):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setColumnHidden(4, True)
        self.table.setMinimumHeight(self.fontMetrics().lineSpacing() * 9)
        self.empty = _wrapped("The plan's tensors appear here once it is checked.")
        self.how = _wrapped("Select tensors in the list, pick a type and “Set for selected”: "
                            "each becomes a rule (a pattern searched in the tensor's name, "
                            "the first match wins).")
        types = valid_override_types()
        self.selected_type = QComboBox()
        self.selected_type.addItems(types)
        self.selected_type.setCurrentText("Q8_0")  # the usual choice for a tensor kept finer
        self.set_selected = QPushButton("Set for selected")
        self.set_selected.setEnabled(False)
        self.rules = QLineEdit(placeholderText="PATTERN=TYPE … e.g. attn_v=Q8_0 ffn_down=Q6_K")
        self.output_type = QComboBox()
        self.embedding_type = QComboBox()
        for box in (self.output_type, self.embedding_type):
            box.addItem(AS_PLANNED, None)
            for name in types:
                box.addItem(name, name)
        self.problem = _wrapped()
        self.problem.setVisible(False)
        self.reason = _wrapped()
        self.reason.setVisible(False)
        selected_row = QHBoxLayout()
        selected_row.addWidget(QLabel("Type:"))
        selected_row.addWidget(self.selected_type)
        selected_row.addWidget(self.set_selected)
        selected_row.addSpacing(12)
        selected_row.addWidget(QLabel("Output:"))
        selected_row.addWidget(self.output_type)
        selected_row.addWidget(QLabel("Embeddings:"))
        selected_row.addWidget(self.embedding_type)
        selected_row.addStretch(1)
        rules_row = QHBoxLayout()
        rules_row.addWidget(QLabel("Rules:"))
        rules_row.addWidget(self.rules, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.reason)
        layout.addWidget(self.empty)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.how)
        layout.addLayout(selected_row)
        layout.addLayout(rules_row)
        layout.addWidget(self.problem)
        self.table.itemSelectionChanged.connect(
            lambda: self.set_selected.setEnabled(bool(self.table.selectedItems())))
        self.set_selected.clicked.connect(self._set_selected)
        self.rules.editingFinished.connect(lambda: self.changed.emit())
        self.output_type.currentIndexChanged.connect(lambda _index: self.changed.emit())
        self.embedding_type.currentIndexChanged.connect(lambda _index: self.changed.emit())

    def set_unavailable(self, reason: str | None) -> None:
        for widget in (self.table, self.selected_type, self.rules, self.output_type,
                       self.embedding_type):
            widget.setEnabled(reason is None)
        self.set_selected.setEnabled(reason is None and bool(self.table.selectedItems()))
        self.reason.setText(reason or "")
        self.reason.setVisible(reason is not None)

    def overrides(self) -> TypeOverrides | None:
        """The user's choices (None: the mix as it is); OptionError for a malformed rule."""
        if not self.reason.isHidden():
            return None
        try:
            overrides = TypeOverrides.parse(self.rules.text().split(),
                                            self.output_type.currentData(),
                                            self.embedding_type.currentData())
        except OptionError as exc:
            self.problem.setText(_error(f"Rules: {exc.message}"
                                        + (f" ({exc.hint})" if exc.hint else "")))
            self.problem.setVisible(True)
            raise
        self.problem.setVisible(False)
        return overrides or None

    def show_plan(self, plan: ConversionPlan | None) -> None:
        selected = {item.text(0) for item in self.table.selectedItems()}
        self.table.clear()
        self.empty.setVisible(plan is None)
        if plan is None:
            return
        overridden = plan.type_rules.overrides if plan.type_rules is not None else None
        importance = plan.importance
        weighted = set(importance.covered) if importance is not None else set()
        unweighted = set(importance.uncovered) if importance is not None else set()
        self.table.setColumnHidden(4, importance is None)
        items = []
        for tensor in plan.tensors:
            matrix = ("weighted" if tensor.name in weighted else
                      "not covered" if tensor.name in unweighted else "")
            # GGUF's own order, row length first, as `modelyard inspect` prints the file.
            item = QTreeWidgetItem([tensor.name, "×".join(map(str, reversed(tensor.shape))),
                                    tensor.out_type, format_bytes(tensor.n_bytes), matrix])
            item.setTextAlignment(3, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if overridden is not None and overridden.matching_rule(tensor.name) is not None:
                item.setToolTip(2, "your rule")
            if tensor.fallback:
                item.setToolTip(2, tensor.fallback)
            items.append(item)
        self.table.addTopLevelItems(items)
        for item in items:
            if item.text(0) in selected:
                item.setSelected(True)

    def _set_selected(self) -> None:
        type_name = self.selected_type.currentText()
        names = [item.text(0) for item in self.table.selectedItems()]
        kept = [rule for rule in self.rules.text().split()
                if not any(rule.partition("=")[0] == _exact(name) for name in names)]
        # Rules are searched in order and the first match wins: the exact names go first.
        self.rules.setText(" ".join([f"{_exact(name)}={type_name}" for name in names] + kept))
        self.changed.emit()


def _exact(name: str) -> str:
    """A pattern that matches this tensor name only."""
    return f"^{re.escape(name)}$"


class SizePanel(QWidget):
    """The chosen type's standard mix, or a mix fitted to a size or to this machine's GPU."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.standard = QRadioButton("The chosen type's standard mix")
        self.to_size = QRadioButton("Fit to a size:")
        self.to_gpu = QRadioButton("Fit this GPU, with a context of:")
        self.modes = QButtonGroup(self)
        for button in (self.standard, self.to_size, self.to_gpu):
            self.modes.addButton(button)
        self.standard.setChecked(True)
        self.size = QLineEdit(placeholderText="e.g. 4.2GiB or 900MiB")
        self.size_problem = _wrapped()
        self.size_problem.setVisible(False)
        self.context = QComboBox()
        for tokens in CONTEXTS:
            self.context.addItem(f"{tokens:,} tokens", tokens)
        self.context.setCurrentIndex(CONTEXTS.index(4096))
        self.reason = _wrapped()
        self.reason.setVisible(False)
        self.gpu_reason = _wrapped("Looking for a GPU…")
        self.about = _wrapped("Each weight gets the type that keeps the model's total error "
                              "(weighted by the importance matrix, when one is chosen) lowest "
                              "within the size; the error is measured on the weights "
                              "themselves. The fitted plan is shown before anything is "
                              "written.")
        grid = QGridLayout()
        grid.addWidget(self.standard, 0, 0, 1, 2)
        grid.addWidget(self.to_size, 1, 0)
        grid.addWidget(self.size, 1, 1)
        grid.addWidget(self.to_gpu, 2, 0)
        grid.addWidget(self.context, 2, 1)
        grid.setColumnStretch(2, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.reason)
        layout.addLayout(grid)
        layout.addWidget(self.size_problem)
        layout.addWidget(self.gpu_reason)
        layout.addWidget(self.about)
        layout.addStretch(1)
        self._gpu_free: int | None = None
        self._reason: str | None = None
        self.modes.buttonToggled.connect(lambda _b, on: on and self._update())
        self.size.editingFinished.connect(self._size_edited)
        self.context.currentIndexChanged.connect(
            lambda _i: self.to_gpu.isChecked() and self.changed.emit())
        self._update(emit=False)

    def set_gpu(self, free_bytes: int | None, name: str = "") -> None:
        self._gpu_free = free_bytes
        self.gpu_reason.setText(
            "No GPU found on this machine, so there is none to fit." if free_bytes is None
            else f"{name or 'The GPU'}: {format_bytes(free_bytes)} free now.")
        self._update(emit=False)

    def set_unavailable(self, reason: str | None) -> None:
        self._reason = reason
        self._update(emit=False)

    def choose_size(self, size_text: str) -> None:
        """Fit to `size_text` (the Fit tab's offer, as the core wrote it)."""
        self.size.setText(size_text)
        if self.to_size.isChecked():
            self.changed.emit()
        else:
            self.to_size.setChecked(True)

    def problem(self) -> str | None:
        """Why the size cannot be used, shown under it; None when it can (or is not used)."""
        text = None
        if self._reason is None and self.to_size.isChecked():
            try:
                parse_size(self.size.text())
            except OptionError as exc:
                text = exc.message  # the hint is part of the message
        self.size_problem.setText(_error(text[:1].upper() + text[1:] + ".") if text else "")
        self.size_problem.setVisible(text is not None)
        return text

    def target_size(self) -> int | None:
        if self._reason is not None or not self.to_size.isChecked() or self.problem():
            return None
        return parse_size(self.size.text())

    def _size_edited(self) -> None:
        if not self.to_size.isChecked():
            self.to_size.setChecked(True)  # typing a size chooses it; emits changed
        else:
            self.changed.emit()

    def gpu(self) -> tuple[int, int] | None:
        """(free VRAM bytes, context) to fit, or None."""
        if self._reason is not None or not self.to_gpu.isChecked() or self._gpu_free is None:
            return None
        return self._gpu_free, int(self.context.currentData())

    def _update(self, emit: bool = True) -> None:
        available = self._reason is None
        self.reason.setText(self._reason or "")
        self.reason.setVisible(not available)
        for widget in (self.standard, self.to_size, self.size):
            widget.setEnabled(available)
        gpu = available and self._gpu_free is not None
        self.to_gpu.setEnabled(gpu)
        self.context.setEnabled(gpu)
        if not available or (self.to_gpu.isChecked() and not gpu):
            self.standard.setChecked(True)
        if emit:
            self.changed.emit()
