"""The merge sheet: models with their weights and densities, the method and its t, the output;
the coverage plan (what happens to every tensor) shown before anything starts; the YAML it
stands for, which can be imported, exported or edited as text.

The sheet only builds requests. Planning, reading and writing YAML files happen off the UI
thread in `MergeController`, which hands back plain data (the plan, the text read); the job
runs the plan the sheet showed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.convert import writable_output_types
from app.core.errors import ModelyardError
from app.core.formats.model_info import format_bytes
from app.core.jobs import JobResult
from app.core.merge import MergePlan, MergeRequest
from app.core.merge.config import GTA_METHODS, METHODS, NEEDS_BASE, parse_config
from app.core.merge.spec import MergeSpec, SpecModel, spec_from_config
from app.gui.background import Background
from app.gui.fit_badge import COLORS
from app.gui.option_words import merge_words
from app.gui.worker import JobQueue

DTYPE_CHOICES = (("Same as the base model", None), ("bfloat16", "BF16"), ("float16", "F16"),
                 ("float32", "F32"))
# Shown beside the method: what it does, in a line.
METHOD_HELP = {
    "linear": "weighted average of the models",
    "slerp": "spherical interpolation between two models; t = 0 is the base",
    "task_arithmetic": "base + the weighted sum of each model's difference from it",
    "ties": "keeps each model's largest changes (density) and merges those that agree in sign",
    "dare_ties": "drops random changes (keeps density), rescales, merges those that agree",
    "dare_linear": "drops random changes (keeps density), rescales, adds them to the base",
    "passthrough": "copies one model (use the YAML for slices of layers)",
}
PLAN_DELAY_MS = 300


class MergeDialog(QDialog):
    plan_wanted = Signal(object)  # MergeRequest: the owner plans it and calls show_plan
    import_wanted = Signal(str)  # a YAML file to read: the owner calls load_yaml
    export_wanted = Signal(str, str)  # path, text: the owner writes it

    def __init__(self, models: list[Path], output_folder: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Merge models")
        self.setWindowModality(Qt.WindowModality.WindowModal)
        self.output_folder = output_folder
        self._custom_yaml = False  # the YAML tab is run as written, not the form
        self._config_path: Path | None = None
        self._checked: CheckedMerge | None = None  # the plan shown, when it can start
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.method.setCurrentText("ties")
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Model", "Weight", "Density"])
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.setColumnWidth(0, 320)
        self.base = QComboBox()
        self.t_slider = QSlider(Qt.Orientation.Horizontal)
        self.t_slider.setRange(0, 100)
        self.t_slider.setValue(50)
        self.t_label = QLabel("t = 0.50")
        self.normalize = QCheckBox("Normalize (divide by the sum of the weights)")
        self.normalize.setChecked(True)
        self.dtype = QComboBox()
        for label, value in DTYPE_CHOICES:
            self.dtype.addItem(label, value)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.union_vocabulary = QCheckBox("Union of the models' vocabularies")
        self.union_vocabulary.setToolTip(
            "Every model's tokens in the merged tokenizer, as mergekit's tokenizer_source: "
            "union; otherwise the base model's tokenizer is kept")
        self.output = QLineEdit(str(output_folder / "merged-model"))
        self.gguf = QComboBox()
        self.gguf.addItem("No GGUF", None)
        for name in writable_output_types():
            self.gguf.addItem(f"Also GGUF {name}", name)
        self.yaml = QPlainTextEdit()
        self.yaml_note = QLabel("Edit the YAML to use slices, per-layer gradients, filters or "
                                "LoRA adapters (MODEL+ADAPTER); it then runs as written.")
        self.yaml_note.setWordWrap(True)
        self.plan = QTreeWidget()
        self.plan.setHeaderLabels(["Tensor", "Action", "From", "Why"])
        self.plan.setRootIsDecorated(False)
        self.summary = QLabel("add at least two models")
        self.summary.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start.setEnabled(False)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(PLAN_DELAY_MS)
        self.timer.timeout.connect(self._request_plan)
        self._build()
        for path in models:
            self.add_model(path)
        self._method_changed()

    # --- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        add, remove = QPushButton("Add model…"), QPushButton("Remove")
        add.clicked.connect(self._browse_model)
        remove.clicked.connect(self._remove_selected)
        import_button, export_button = QPushButton("Import YAML…"), QPushButton("Export YAML…")
        import_button.clicked.connect(self._import)
        export_button.clicked.connect(self._export)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_output)
        model_buttons = QHBoxLayout()
        for button in (add, remove):
            model_buttons.addWidget(button)
        model_buttons.addStretch(1)
        for button in (import_button, export_button):
            model_buttons.addWidget(button)
        t_row = QHBoxLayout()
        t_row.addWidget(self.t_slider, 1)
        t_row.addWidget(self.t_label)
        output_row = QHBoxLayout()
        output_row.addWidget(self.output, 1)
        output_row.addWidget(browse)
        form_page = QWidget()
        form = QFormLayout(form_page)
        form.addRow("Method", self.method)
        form.addRow("", self.method_help)
        form.addRow(self.table)
        form.addRow(model_buttons)
        form.addRow("Base model", self.base)
        form.addRow("Interpolation", t_row)
        form.addRow("", self.normalize)
        form.addRow("Output dtype", self.dtype)
        form.addRow("DARE seed", self.seed)
        form.addRow("Tokenizer", self.union_vocabulary)
        yaml_page = QWidget()
        yaml_layout = QVBoxLayout(yaml_page)
        yaml_layout.addWidget(self.yaml_note)
        yaml_layout.addWidget(self.yaml)
        self.tabs = QTabWidget()
        self.tabs.addTab(form_page, "Models")
        self.tabs.addTab(yaml_page, "YAML")
        self.tabs.addTab(self.plan, "Coverage plan")
        out = QFormLayout()
        out.addRow("Output folder", output_row)
        out.addRow("", self.gguf)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(out)
        layout.addWidget(self.summary)
        layout.addWidget(self.buttons)
        self.resize(760, 620)
        self.buttons.rejected.connect(self.reject)
        self.buttons.accepted.connect(self.accept)
        self.method.currentTextChanged.connect(self._method_changed)
        self.base.currentIndexChanged.connect(self._changed)
        self.t_slider.valueChanged.connect(self._t_changed)
        self.normalize.toggled.connect(self._changed)
        self.dtype.currentIndexChanged.connect(self._changed)
        self.seed.valueChanged.connect(self._changed)
        self.union_vocabulary.toggled.connect(self._changed)
        self.output.textChanged.connect(lambda _t: self.timer.start())
        self.gguf.currentIndexChanged.connect(lambda _i: self.timer.start())
        self.yaml.textChanged.connect(self._yaml_edited)

    # --- the form -------------------------------------------------------------------------
    def add_model(self, path: Path, weight: float = 1.0, density: float = 0.5) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        label = QLabel(str(path))
        label.setToolTip(str(path))
        label.setProperty("path", str(path))
        self.table.setCellWidget(row, 0, label)
        for column, (value, low, high) in ((1, (weight, -10.0, 10.0)),
                                           (2, (density, 0.01, 1.0))):
            spin = QDoubleSpinBox()
            spin.setRange(low, high)
            spin.setSingleStep(0.05)
            spin.setDecimals(2)
            spin.setValue(value)
            spin.valueChanged.connect(self._changed)
            self.table.setCellWidget(row, column, spin)
        self._fill_bases()
        self._changed()

    def model_paths(self) -> list[Path]:
        return [Path(self.table.cellWidget(r, 0).property("path"))
                for r in range(self.table.rowCount())]

    def _spin(self, row: int, column: int) -> QDoubleSpinBox:
        widget = self.table.cellWidget(row, column)
        assert isinstance(widget, QDoubleSpinBox)
        return widget

    def set_weight(self, row: int, weight: float, density: float | None = None) -> None:
        self._spin(row, 1).setValue(weight)
        if density is not None:
            self._spin(row, 2).setValue(density)

    def _fill_bases(self) -> None:
        current = self.base.currentData()
        self.base.blockSignals(True)
        self.base.clear()
        for path in self.model_paths():
            self.base.addItem(path.name, str(path))
        index = self.base.findData(current)
        self.base.setCurrentIndex(max(index, 0))
        self.base.blockSignals(False)

    def _remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        for row in rows or [self.table.rowCount() - 1]:
            if row >= 0:
                self.table.removeRow(row)
        self._fill_bases()
        self._changed()

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a model folder",
                                                  str(self.output_folder))
        if folder:
            self.add_model(Path(folder))

    def _browse_output(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self, "Merged model folder",
                                                    self.output.text())
        if path:
            self.output.setText(path)

    def _method_changed(self, *_: object) -> None:
        method = self.method.currentText()
        self.method_help.setText(METHOD_HELP.get(method, ""))
        self.t_slider.setEnabled(method == "slerp")
        self.base.setEnabled(method in NEEDS_BASE)
        self.normalize.setEnabled(method in ("linear", *GTA_METHODS))
        self.normalize.blockSignals(True)
        self.normalize.setChecked(method in ("linear", "ties"))
        self.normalize.blockSignals(False)
        self.seed.setEnabled(method.startswith("dare"))
        self.table.setColumnHidden(2, method not in ("ties", "dare_ties", "dare_linear"))
        self.table.setColumnHidden(1, method in ("slerp", "passthrough"))
        self._changed()

    def _t_changed(self, value: int) -> None:
        self.t_label.setText(f"t = {value / 100:.2f}")
        self._changed()

    def spec(self) -> MergeSpec:
        models = tuple(SpecModel(path, self._spin(r, 1).value(), self._spin(r, 2).value())
                       for r, path in enumerate(self.model_paths()))
        base = self.base.currentData()
        return MergeSpec(self.method.currentText(), models, Path(base) if base else None,
                         self.t_slider.value() / 100, self.normalize.isChecked(),
                         self.dtype.currentData(), self.seed.value(),
                         self.union_vocabulary.isChecked())

    def _mark_base(self) -> None:
        """The base of a delta method takes no weight or density: its row says so."""
        method = self.method.currentText()
        base = self.base.currentData()
        for row, path in enumerate(self.model_paths()):
            is_base = method in NEEDS_BASE and str(path) == base
            for column in (1, 2):
                self._spin(row, column).setEnabled(not is_base)
                self._spin(row, column).setToolTip("the base model" if is_base else "")

    def _changed(self, *_: object) -> None:
        self._mark_base()
        if self._custom_yaml:
            return
        self.yaml.blockSignals(True)
        self.yaml.setPlainText(self.spec().to_yaml())
        self.yaml.blockSignals(False)
        self.timer.start()

    def _yaml_edited(self) -> None:
        self._custom_yaml = True
        self.tabs.widget(0).setEnabled(False)
        self.timer.start()

    # --- YAML in and out ------------------------------------------------------------------
    def _import(self) -> None:
        path, _filter = QFileDialog.getOpenFileName(self, "Import a mergekit YAML",
                                                    str(self.output_folder), "YAML (*.yml *.yaml)")
        if path:
            self.import_wanted.emit(path)

    def _export(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self, "Export the merge as YAML",
                                                    str(self.output_folder / "merge.yaml"),
                                                    "YAML (*.yml *.yaml)")
        if path:
            self.export_wanted.emit(path, self.yaml.toPlainText())

    def load_yaml(self, text: str, path: Path | None, spec: MergeSpec | None) -> None:
        """Show an imported config: in the form when it can hold it, else as YAML to run."""
        self._config_path = path
        if spec is None:
            self.yaml.setPlainText(text)  # marks the YAML as custom
            self.tabs.setCurrentIndex(1)
            return
        self._custom_yaml = False
        self.tabs.widget(0).setEnabled(True)
        self.table.setRowCount(0)
        for model in spec.models:
            self.add_model(model.path, model.weight, model.density)
        self.method.setCurrentText(spec.method)
        if spec.base is not None:
            self.base.setCurrentIndex(max(self.base.findData(str(spec.base)), 0))
        self.t_slider.setValue(round(spec.t * 100))
        if spec.normalize is not None:
            self.normalize.setChecked(spec.normalize)
        self.dtype.setCurrentIndex(max(self.dtype.findData(spec.dtype), 0))
        self.seed.setValue(spec.seed)
        self.union_vocabulary.setChecked(spec.union_vocabulary)
        self._changed()

    # --- the plan -------------------------------------------------------------------------
    def request(self) -> MergeRequest:
        return MergeRequest(Path(self.output.text()).expanduser(), self._config_path,
                            self.yaml.toPlainText(), device="auto",
                            out_type=self.gguf.currentData())

    def checked_request(self) -> MergeRequest:
        """The request with the plan the sheet showed, which the job runs without planning
        again; the bare request (planned in the job) if the form changed since."""
        request = self.request()
        checked = self._checked
        if checked is None or checked.request != request:
            return request
        return replace(request, program=checked.plan)

    def _request_plan(self) -> None:
        self._checked = None
        self.start.setEnabled(False)
        if not self.output.text().strip():
            self.summary.setText("choose an output folder")
            return
        self.summary.setText("checking the plan…")
        self.plan_wanted.emit(self.request())

    def show_plan(self, checked: CheckedMerge) -> None:
        if checked.request != self.request():
            return  # the form changed since; a newer plan is on its way
        self.plan.clear()
        plan, error = checked.shown, checked.error
        if plan is None:
            self.summary.setText(f"<span style='color:{COLORS['none']}'>{error}</span>")
            return
        for tensor in plan["tensors"]:
            item = QTreeWidgetItem([tensor["name"], tensor["action"],
                                    ", ".join(Path(m).name for m in tensor["models"]),
                                    tensor.get("reason", "")])
            if tensor["action"] == "refused":
                item.setForeground(1, QColor(COLORS["none"]))
            self.plan.addTopLevelItem(item)
        for column in range(3):
            self.plan.resizeColumnToContents(column)
        counts = plan["counts"]
        lines = [f"{counts['merged']} tensors merged, {counts['copied']} copied, "
                 f"{counts['refused']} refused. Writes {format_bytes(plan['output_bytes'])}, "
                 f"peak memory about {format_bytes(plan['estimated_peak_bytes'])}."]
        lines += plan["warnings"]
        if error:
            lines.append(f"<span style='color:{COLORS['none']}'>{error}</span>")
        self.summary.setText("<br>".join(lines))
        can_start = counts["refused"] == 0 and error is None
        self._checked = checked if can_start else None
        self.start.setEnabled(can_start)
        if counts["refused"]:
            self.tabs.setCurrentWidget(self.plan)


@dataclass(frozen=True)
class CheckedMerge:
    """A request planned off the UI thread: the plan, as the sheet shows it, and why it cannot
    start (in the sheet's words), if it cannot."""

    request: MergeRequest
    plan: MergePlan | None
    shown: dict[str, Any] | None
    error: str | None


def plan_and_check(request: MergeRequest) -> CheckedMerge:
    """Plan (reads headers) and check memory and disk, off the UI thread."""
    from app.core.merge.job import check_resources

    try:
        plan = request.plan()
    except ModelyardError as exc:
        return CheckedMerge(request, None, None, exc.worded(merge_words))
    error = None
    if not plan.refused:
        try:
            check_resources(plan)
        except ModelyardError as exc:
            error = exc.worded(merge_words)
    return CheckedMerge(request, plan, plan.to_json(), error)


def read_yaml(path: Path) -> tuple[str, MergeSpec | None]:
    text = path.read_text(encoding="utf-8")
    try:
        spec = spec_from_config(parse_config(text, path))
    except ModelyardError:
        spec = None  # shown as text; the plan says what is wrong with it
    return text, spec


class MergeController(QObject):
    merged = Signal(object, object)  # MergeResult, the first parent model's path

    def __init__(self, queue: JobQueue, background: Background, window: QWidget,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.queue, self.background, self.window = queue, background, window
        self._jobs: dict[int, Path] = {}
        queue.job_finished.connect(self._finished)

    def open_dialog(self, models: list[Path], output_folder: Path) -> MergeDialog:
        dialog = MergeDialog(models, output_folder, self.window)
        dialog.plan_wanted.connect(lambda request: self.background.submit(
            f"merge-plan-{id(dialog)}", lambda: plan_and_check(request), dialog.show_plan))
        dialog.import_wanted.connect(lambda path: self.background.submit(
            f"merge-import-{id(dialog)}", lambda: read_yaml(Path(path)),
            lambda result: dialog.load_yaml(result[0], Path(path), result[1]),
            lambda error: QMessageBox.warning(dialog, "Cannot import", str(error))))
        dialog.export_wanted.connect(lambda path, text: self.background.submit(
            f"merge-export-{id(dialog)}", lambda: Path(path).write_text(text, encoding="utf-8"),
            lambda _result: None,
            lambda error: QMessageBox.warning(dialog, "Cannot export", str(error))))
        dialog.accepted.connect(lambda: self.start(dialog.checked_request(),
                                                   dialog.model_paths()))
        dialog.open()
        return dialog

    def start(self, request: MergeRequest, parents: list[Path]) -> int:
        job_id = self.queue.submit(request)
        if parents:
            self._jobs[job_id] = parents[0]
        return job_id

    def _finished(self, job_id: int, result: JobResult) -> None:
        parent = self._jobs.pop(job_id, None)
        if parent is not None and result.status == "done":
            self.merged.emit(result.value, parent)
