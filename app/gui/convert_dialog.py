"""The convert sheet: format, quant (each with its size and fit, the recommended one chosen),
output name, and the few options that matter; advanced ones fold away.

Estimates come in from the outside (`show_estimates`, `show_plan`) as plain data; the sheet
only builds the ConvertRequest the user asked for.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.convert import ConversionPlan, ConvertRequest, default_output_path
from app.core.estimate.verdict import CandidateFit
from app.core.formats.model_info import ModelInfo, format_bytes
from app.gui.fit_badge import COLORS, fit_short_text

HF_DTYPES = ("BF16", "F16", "F32")


class ConvertDialog(QDialog):
    plan_wanted = Signal(object)  # ConvertRequest: the owner plans it and calls show_plan

    def __init__(self, model: ModelInfo, preselect: str | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.preselect = preselect
        self.setWindowTitle(f"Convert {model.name}")
        self.setWindowModality(Qt.WindowModality.WindowModal)
        self._path_edited = False
        self._estimates: list[CandidateFit] = []
        self.to_gguf = QRadioButton("GGUF (llama.cpp, Ollama, LM Studio)")
        self.to_hf = QRadioButton("Hugging Face safetensors (transformers)")
        self.to_gguf.setChecked(True)
        self.to_hf.setEnabled(model.format == "gguf")
        self.types = QButtonGroup(self)
        self.types.setExclusive(True)
        self.type_grid = QGridLayout()
        self.output = QLineEdit()
        browse = QPushButton("Browse…")
        self.summary = QLabel("estimating…")
        self.summary.setWordWrap(True)
        self.device = QComboBox()
        for label, value in (("Automatic (CUDA when present)", "auto"), ("CPU", "cpu"),
                             ("CUDA", "cuda")):
            self.device.addItem(label, value)
        self.pure = QCheckBox("Every weight in the chosen type (--pure: no Q6_K output tensor)")
        self.keep_type = QLineEdit(placeholderText="tensors to copy unchanged, e.g. *attn_v*")
        self.keep_type.setEnabled(model.format == "gguf")
        self.overwrite = QCheckBox("Replace the output if it exists")
        self.require_tokenizer = QCheckBox("Stop if the model has no tokenizer")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.start.setEnabled(False)
        self._build(browse)
        self.to_gguf.toggled.connect(self._format_changed)
        self.types.buttonToggled.connect(self._type_changed)
        self.output.textEdited.connect(lambda _text: setattr(self, "_path_edited", True))
        browse.clicked.connect(self._browse)
        self.device.currentIndexChanged.connect(self._request_plan)
        for box in (self.pure, self.overwrite, self.require_tokenizer):
            box.toggled.connect(self._request_plan)
        self.keep_type.editingFinished.connect(self._request_plan)
        self.output.editingFinished.connect(self._request_plan)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._fill_types([])

    def _build(self, browse: QPushButton) -> None:
        source = QLabel(f"<b>{self.model.name}</b> · {self.model.format.upper()} · "
                        f"{self.model.quantization or '?'} · {format_bytes(self.model.file_size)}")
        source.setToolTip(str(self.model.path))
        formats = QVBoxLayout()
        formats.addWidget(self.to_gguf)
        formats.addWidget(self.to_hf)
        output_row = QHBoxLayout()
        output_row.addWidget(self.output, 1)
        output_row.addWidget(browse)
        advanced = QGroupBox()
        advanced_form = QFormLayout(advanced)
        advanced_form.addRow("Device:", self.device)
        advanced_form.addRow("", self.pure)
        advanced_form.addRow("Keep type:", self.keep_type)
        advanced_form.addRow("", self.overwrite)
        advanced_form.addRow("", self.require_tokenizer)
        advanced.setVisible(False)
        fold = QToolButton()
        fold.setText("Advanced options")
        fold.setCheckable(True)
        fold.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        fold.setArrowType(Qt.ArrowType.RightArrow)
        fold.toggled.connect(advanced.setVisible)
        fold.toggled.connect(lambda on: fold.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow))
        form = QFormLayout()
        form.addRow("Model:", source)
        form.addRow("Convert to:", formats)
        form.addRow("Type:", self.type_grid)
        form.addRow("Output:", output_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.summary)
        layout.addWidget(fold)
        layout.addWidget(advanced)
        layout.addWidget(self.buttons)

    # ---- quant buttons -------------------------------------------------------------------
    def _fill_types(self, fits: list[CandidateFit]) -> None:
        for button in self.types.buttons():
            self.types.removeButton(button)
            button.deleteLater()
        options: list[tuple[str, str, str, bool, CandidateFit | None]]
        if self.to_hf.isChecked():
            options = [(name, name, "", True, None) for name in HF_DTYPES]
        else:
            options = [(f.candidate.quant,
                        f"{'★ ' if f.recommended else ''}{f.candidate.quant}\n"
                        f"{format_bytes(f.candidate.model.file_size)} · "
                        f"{fit_short_text(f.verdict)}",
                        f.verdict.text if f.candidate.writable else
                        "estimate only: Modelyard cannot write these tensor types yet",
                        f.candidate.writable, f) for f in fits]
        chosen = self.preselect
        if chosen is None:
            chosen = next((o[0] for o in options if o[4] is not None and o[4].recommended),
                          options[0][0] if options else None)
        for index, (name, text, tip, enabled, fit) in enumerate(options):
            button = QPushButton(text)
            button.setCheckable(True)
            button.setEnabled(enabled)
            button.setToolTip(tip)
            button.setProperty("quant", name)
            if fit is not None:
                button.setStyleSheet(f"QPushButton:checked {{ border: 2px solid "
                                     f"{COLORS[fit.verdict.kind]}; font-weight: bold; }}")
            self.types.addButton(button)
            self.type_grid.addWidget(button, index // 4, index % 4)
            if name == chosen and enabled:
                button.setChecked(True)
        if self.types.checkedButton() is None:
            first = next((b for b in self.types.buttons() if b.isEnabled()), None)
            if first is not None:
                first.setChecked(True)

    def show_estimates(self, fits: list[CandidateFit]) -> None:
        """Size and fit of every GGUF type, computed by the owner in the background."""
        if self.to_gguf.isChecked():
            self._fill_types(fits)
        self._estimates = fits

    def selected_type(self) -> str | None:
        button = self.types.checkedButton()
        return button.property("quant") if button is not None else None

    def target(self) -> str:
        return "hf" if self.to_hf.isChecked() else "gguf"

    def _format_changed(self) -> None:
        self.preselect = None
        self._path_edited = False
        self._fill_types(self._estimates if self.to_gguf.isChecked() else [])
        self._type_changed()

    def _type_changed(self, *_: object) -> None:
        out_type = self.selected_type()
        if out_type is None:
            return
        if not self._path_edited:
            self.output.setText(str(default_output_path(self.model, out_type, self.target())))
        self._request_plan()

    def _browse(self) -> None:
        if self.to_hf.isChecked():
            name = QFileDialog.getExistingDirectory(self, "Output folder",
                                                    str(Path(self.output.text()).parent))
        else:
            name, _ = QFileDialog.getSaveFileName(self, "Output GGUF", self.output.text(),
                                                  "GGUF (*.gguf)")
        if name:
            self.output.setText(name)
            self._path_edited = True
            self._request_plan()

    # ---- the request ---------------------------------------------------------------------
    def request(self) -> ConvertRequest | None:
        out_type = self.selected_type()
        if out_type is None or not self.output.text().strip():
            return None
        return ConvertRequest(
            Path(self.model.path), Path(self.output.text().strip()), out_type,
            to=self.target(),  # type: ignore[arg-type]
            device=self.device.currentData(),
            keep_type=self.keep_type.text().strip() or None,
            overwrite=self.overwrite.isChecked(),
            require_tokenizer=self.require_tokenizer.isChecked(), pure=self.pure.isChecked())

    def _request_plan(self, *_: object) -> None:
        request = self.request()
        self.start.setEnabled(False)
        if request is not None:
            self.summary.setText("checking the plan…")
            self.plan_wanted.emit(request)

    def show_plan(self, request: ConvertRequest, plan: ConversionPlan | None,
                  error: str | None, disk_free: int | None) -> None:
        if request != self.request():
            return  # the user has changed something since
        if plan is None:
            self.summary.setText(f"<span style='color:{COLORS['none']}'>{error}</span>")
            self.start.setEnabled(False)
            return
        where = "VRAM" if plan.device == "cuda" else "RAM"
        lines = [f"Writes {format_bytes(plan.output_bytes)} ({len(plan.tensors)} tensors) on "
                 f"{plan.device}; peak {format_bytes(plan.estimated_peak_bytes)} {where} "
                 f"(loading it all would take {format_bytes(plan.naive_peak_bytes)})."]
        if disk_free is not None:
            lines.append(f"{format_bytes(disk_free)} free where the output goes.")
        if plan.fallbacks:
            lines.append(f"{len(plan.fallbacks)} tensor(s) fall back to another type "
                         f"(e.g. {plan.fallbacks[0]}).")
        lines += list(plan.warnings)
        self.summary.setText("<br>".join(lines))
        self.start.setEnabled(True)
