"""The convert sheet: format, quant (each with its size and fit, the recommended one chosen),
output name, and the few options that matter; advanced ones fold away.

Estimates come in from the outside (`show_estimates`, `show_plan`) as plain data; the sheet
only builds the ConvertRequest the user asked for.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
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
    QLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.core.convert import ConversionPlan, ConvertRequest, default_output_path
from app.core.convert.importance import importance_applies
from app.core.convert.plan_hf import BNB_QUANTIZATIONS
from app.core.errors import OptionError
from app.core.estimate.originals import is_quantized
from app.core.estimate.verdict import CandidateFit
from app.core.formats.model_info import ModelInfo, format_bytes
from app.gui.convert_advanced import ImportancePanel, SizePanel, TensorPanel
from app.gui.convert_scroll import FullScrollArea
from app.gui.fit_badge import COLORS, fit_short_text
from app.gui.quant_guide import GROUPS, bits_per_weight, group_of, type_note

HF_DTYPES = ("BF16", "F16", "F32")
PER_ROW = 4  # type buttons per row within a group: the sheet fits a 1024-wide screen


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
        if model.format != "gguf":
            self.to_hf.setText("Hugging Face safetensors: the source already is one")
        self.types = QButtonGroup(self)
        self.types.setExclusive(True)
        self.type_grid = QGridLayout()
        self.type_grid.setHorizontalSpacing(6)
        self.type_grid.setVerticalSpacing(6)
        self._keep: CandidateFit | None = None
        self.advice = QLabel("Estimating the size and fit of each type…")
        self.advice.setWordWrap(True)
        self.type_note = QLabel()
        self.type_note.setWordWrap(True)
        self.output = QLineEdit(placeholderText="chosen with the type")
        browse = QPushButton("Browse…")
        self.summary = QLabel("Choose a type to see the plan.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.start_reason = QLabel("Choose a type.")
        self.start_reason.setWordWrap(True)
        self.device = QComboBox()
        for label, value in (("Automatic (CUDA when present)", "auto"), ("CPU", "cpu"),
                             ("CUDA", "cuda")):
            self.device.addItem(label, value)
        self.pure = QCheckBox("Every weight in the chosen type (--pure: no Q6_K output tensor)")
        self.keep_type = QLineEdit(placeholderText="tensors to copy unchanged, e.g. *attn_v*")
        self.keep_type.setEnabled(model.format == "gguf")
        if model.format != "gguf":
            self.keep_type.setPlaceholderText("only for a GGUF source: an HF model's tensors "
                                              "are all converted")
        self.importance = ImportancePanel()
        self.tensors = TensorPanel()
        self.sizing = SizePanel()
        self.source_quantized = is_quantized(model) or model.quantization in BNB_QUANTIZATIONS
        self.importance.set_compute_unavailable(
            None if model.format == "hf" and not self.source_quantized else
            "Computing a matrix runs the original model from its Hugging Face folder; this "
            f"source is {'a GGUF file' if model.format == 'gguf' else 'a quantized checkpoint'}"
            ".")
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
        for panel in (self.importance, self.tensors, self.sizing):
            panel.changed.connect(self._request_plan)
        self.output.editingFinished.connect(self._request_plan)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._fill_types([])
        self._update_panels()
        if self.to_gguf.isChecked():
            self.advice.setText("Estimating the size and fit of each type…")
            self.advice.setVisible(True)
            self.start_reason.setText("Estimating the types…")

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
        options = QGroupBox()
        advanced_form = QFormLayout(options)
        advanced_form.addRow("Device:", self.device)
        advanced_form.addRow("", self.pure)
        advanced_form.addRow("Keep type:", self.keep_type)
        advanced_form.addRow("", self.overwrite)
        advanced_form.addRow("", self.require_tokenizer)
        advanced = QTabWidget()
        advanced.addTab(options, "Options")
        advanced.addTab(self.importance, "Importance matrix")
        advanced.addTab(self.tensors, "Tensors")
        advanced.addTab(self.sizing, "Size target")
        advanced.setVisible(False)
        self.advanced = advanced
        fold = QToolButton()
        fold.setText("Advanced options")
        fold.setCheckable(True)
        fold.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        fold.setArrowType(Qt.ArrowType.RightArrow)
        fold.toggled.connect(advanced.setVisible)
        # Opened on a small screen, the options are below the fold of the scrolling part.
        fold.toggled.connect(lambda on: on and QTimer.singleShot(
            0, lambda: self.body.ensureWidgetVisible(advanced, 0, 0)))
        fold.toggled.connect(lambda on: fold.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow))
        self.fold = fold
        types = QVBoxLayout()
        types.addLayout(self.type_grid)
        types.addWidget(self.type_note)
        types.addWidget(self.advice)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Model:", source)
        form.addRow("Convert to:", formats)
        form.addRow("Type:", types)
        form.addRow("Output:", output_row)
        # A long plan (many warnings) scrolls inside its own area instead of squeezing the
        # type buttons below their size.
        summary_area = QScrollArea()
        summary_area.setWidgetResizable(True)
        summary_area.setFrameShape(QScrollArea.Shape.NoFrame)
        summary_area.setWidget(self.summary)
        summary_area.setMinimumHeight(self.fontMetrics().lineSpacing() * 5 + 8)
        self.summary_area = summary_area
        bottom = QHBoxLayout()
        bottom.addWidget(self.start_reason, 1)
        bottom.addWidget(self.buttons)
        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 0, 0)
        body_layout.addLayout(form)
        body_layout.addWidget(summary_area, 1)
        body_layout.addWidget(fold)
        body_layout.addWidget(advanced)
        # With the advanced options open, the sheet can be taller than a small window: it
        # then scrolls as a whole, so that no control is squeezed below its size.
        self.body = FullScrollArea()
        self.body.setWidget(body)
        self.body.height_limit = self._body_height_limit
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetMinimumSize)
        layout.addWidget(self.body, 1)
        layout.addLayout(bottom)

    def _body_height_limit(self) -> int:
        """What the window this sheet covers leaves for the scrolling part."""
        parent = self.parentWidget()
        if parent is None:
            return 10**6
        margins = self.layout().contentsMargins()
        return (parent.window().height() - self.buttons.sizeHint().height() - margins.top()
                - margins.bottom() - self.layout().spacing())

    def sizeHint(self) -> QSize:
        """All of the sheet, but never taller than the window it is a sheet of."""
        hint = super().sizeHint()
        parent = self.parentWidget()
        if parent is not None:
            hint.setHeight(min(hint.height(), parent.window().height()))
        return hint

    # ---- quant buttons -------------------------------------------------------------------
    def _fill_types(self, fits: list[CandidateFit]) -> None:
        for button in self.types.buttons():
            self.types.removeButton(button)
            button.deleteLater()
        while self.type_grid.count():
            item = self.type_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        if self.to_hf.isChecked():
            self._keep = None
            self._add_group_row(0, "Data type", [(name, name, True, None) for name in HF_DTYPES])
            self._choose(self.preselect or HF_DTYPES[0])
            self._explain_types([])
            return
        self._keep = next((f for f in fits if f.candidate.keep), None)
        conversions = [f for f in fits if not f.candidate.keep]
        row = 0
        for group, members in GROUPS:
            entries = [(f.candidate.quant, self._button_text(f), f.candidate.writable, f)
                       for quant in members for f in conversions if f.candidate.quant == quant]
            for start in range(0, len(entries), PER_ROW):
                self._add_group_row(row, group if start == 0 else "",
                                    entries[start:start + PER_ROW])
                row += 1
        others = [f for f in conversions if group_of(f.candidate.quant) == "Other"]
        if others:
            self._add_group_row(row, "Other", [(f.candidate.quant, self._button_text(f),
                                                f.candidate.writable, f) for f in others])
        recommended = next((f for f in conversions if f.recommended), None)
        self._choose(self.preselect or (recommended.candidate.quant if recommended else None))
        self._explain_types(fits)

    def _add_group_row(self, row: int, group: str,
                       entries: list[tuple[str, str, bool, CandidateFit | None]]) -> None:
        label = QLabel(group)
        label.setProperty("role", "group")
        self.type_grid.addWidget(label, row, 0)
        for column, (name, text, enabled, fit) in enumerate(entries, start=1):
            button = QPushButton(text)
            button.setCheckable(True)
            button.setEnabled(enabled)
            button.setProperty("quant", name)
            button.setToolTip(type_note(name) if enabled else
                              "estimate only: Modelyard cannot write these tensor types yet")
            if fit is not None:
                # A border, not bold text: bold would outgrow the button's size hint.
                button.setStyleSheet(f"QPushButton:checked {{ border: 2px solid "
                                     f"{COLORS[fit.verdict.kind]}; }}")
            # Never shorter than its two lines: a long plan below scrolls instead.
            button.setMinimumHeight(button.sizeHint().height())
            self.types.addButton(button)
            self.type_grid.addWidget(button, row, column)

    @staticmethod
    def _button_text(fit: CandidateFit) -> str:
        bpw = bits_per_weight(fit.candidate)
        details = [f"{bpw:.1f} bpw" if bpw else "", format_bytes(fit.candidate.model.file_size),
                   fit_short_text(fit.verdict) if fit.candidate.writable else "can't write"]
        return (f"{'★ ' if fit.recommended else ''}{fit.candidate.quant}\n"
                + " · ".join(d for d in details if d))

    def _choose(self, quant: str | None) -> None:
        for button in self.types.buttons():
            if button.property("quant") == quant and button.isEnabled():
                button.setChecked(True)
                return

    def _explain_types(self, fits: list[CandidateFit]) -> None:
        """Why the recommended type (or the file as it is), and why some types are grey."""
        lines = []
        keep = self._keep
        recommended = next((f for f in fits if f.recommended), None)
        if keep is not None and keep.recommended and not self.source_quantized:
            lines.append(f"This {keep.candidate.quant} file already fits this machine "
                         f"({keep.verdict.text.split(':')[0]}): choose a type to make it "
                         "smaller or faster, or for a runtime that needs one.")
        elif keep is not None and keep.recommended:
            lines.append(f"This {keep.candidate.quant} file already fits this machine "
                         f"({keep.verdict.text.split(':')[0]}). Converting quantized weights "
                         "again adds a second error: choose a type only if a runtime needs it.")
        elif recommended is not None:
            why = "the best quality that fits this machine"
            lines.append(f"★ {recommended.candidate.quant}: {why} "
                         f"({recommended.verdict.text.split(':')[0]}).")
            if recommended.candidate.requantizes:
                lines.append(f"Quantizing this {recommended.candidate.source_quant} file again "
                             "stacks a second error on the first; the original weights, if you "
                             "have them, make a better source.")
        elif fits:
            lines.append("No type fits this machine at this context.")
        grey = [f.candidate.quant for f in fits if not f.candidate.writable]
        if grey:
            lines.append(f"Greyed out ({', '.join(grey)}): Modelyard cannot write their tensor "
                         "types yet; the sizes are estimates.")
        self.advice.setText(" ".join(lines[:1]) + ("<br>" + "<br>".join(lines[1:])
                                                   if len(lines) > 1 else ""))
        self.advice.setVisible(bool(lines))
        self._update_type_note()

    def _update_type_note(self) -> None:
        quant = self.selected_type()
        if quant is None:
            self.type_note.setText("")
            self.type_note.setVisible(False)
            return
        fit = next((f for f in self._estimates if f.candidate.quant == quant
                    and not f.candidate.keep), None) if self.to_gguf.isChecked() else None
        text = f"<b>{quant}</b>: {type_note(quant)}"
        if fit is not None:
            bpw = bits_per_weight(fit.candidate)
            if bpw:
                text += f" ({bpw:.2f} bits per weight here)"
            if fit.candidate.upward:
                text += (f". No quality comes back from a {fit.candidate.source_quant} "
                         "source: only a bigger file")
            elif fit.candidate.requantizes:
                text += f". Its error stacks on the source's {fit.candidate.source_quant} error"
        self.type_note.setText(text + ".")
        self.type_note.setVisible(True)

    def show_estimates(self, fits: list[CandidateFit]) -> None:
        """Size and fit of every GGUF type, computed by the owner in the background."""
        self._estimates = fits
        if self.to_gguf.isChecked():
            self._fill_types(fits)
        self._type_changed()

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

    def _update_panels(self) -> None:
        """Say in each advanced panel why it does not apply to the chosen output."""
        out_type = self.selected_type()
        gguf = self.to_gguf.isChecked()
        not_gguf = "Only for a GGUF output."
        if not gguf:
            importance: str | None = not_gguf
        elif out_type is None:
            importance = "Choose a type first."
        elif self.source_quantized:
            importance = (f"The source is already quantized ({self.model.quantization}): a "
                          "matrix weighs the error of quantizing original weights.")
        elif not importance_applies(out_type):
            importance = (f"{out_type} does not use one: a matrix weighs only K-quants "
                          "(Q2_K to Q6_K) and the legacy 4- and 5-bit types.")
        else:
            importance = None
        self.importance.set_unavailable(importance)
        self.tensors.set_unavailable(None if gguf else not_gguf + " An HF folder keeps one "
                                                              "data type for every weight.")
        self.sizing.set_unavailable(None if gguf else not_gguf)

    def _type_changed(self, *_: object) -> None:
        self._update_type_note()
        self._update_panels()
        out_type = self.selected_type()
        if out_type is None:
            self.start.setEnabled(False)
            self.start_reason.setText("Choose a type above to start." if self.types.buttons()
                                      else "Estimating the types…")
            self.summary.setText("Choose a type to see the plan.")
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
        if out_type is None or not self.output.text().strip() or self._incomplete():
            return None
        try:
            overrides = self.tensors.overrides()
        except OptionError:
            return None
        gpu = self.sizing.gpu()
        return ConvertRequest(
            Path(self.model.path), Path(self.output.text().strip()), out_type,
            to=self.target(),  # type: ignore[arg-type]
            device=self.device.currentData(),
            keep_type=self.keep_type.text().strip() or None,
            overwrite=self.overwrite.isChecked(),
            require_tokenizer=self.require_tokenizer.isChecked(), pure=self.pure.isChecked(),
            type_overrides=overrides, imatrix=self.importance.path(),
            target_size=self.sizing.target_size(),
            fit_gpu_vram=gpu[0] if gpu else None,
            fit_gpu_context=gpu[1] if gpu else 4096)

    def _incomplete(self) -> str | None:
        """Why the advanced options do not make a request yet."""
        missing = self.importance.missing()
        if missing is not None:
            return missing
        try:
            self.tensors.overrides()
        except OptionError:
            return "Correct the per-tensor rules in the advanced options to start."
        if self.sizing.problem() is not None:
            return "Correct the size target in the advanced options to start."
        return None

    def _request_plan(self, *_: object) -> None:
        request = self.request()
        self.start.setEnabled(False)
        if request is None:
            self.start_reason.setText(
                "Choose a type above to start." if self.selected_type() is None else
                "Give the output a name to start." if not self.output.text().strip() else
                self._incomplete() or "")
            return
        self.summary.setText("Checking the plan…")
        self.start_reason.setText("Checking the plan…")
        self.plan_wanted.emit(request)

    def show_plan(self, request: ConvertRequest, plan: ConversionPlan | None,
                  error: str | None, disk_free: int | None,
                  error_file: Path | None = None) -> None:
        if request != self.request():
            return  # the user has changed something since
        self.importance.show_plan(plan, error if error_file is not None
                                  and error_file == request.imatrix else None)
        self.tensors.show_plan(plan if plan is not None and plan.to == "gguf" else None)
        if plan is None:
            self.summary.setText(f"<span style='color:{COLORS['none']}'>{error}</span>")
            self.start.setEnabled(False)
            self.start_reason.setText("Cannot start: see the plan above.")
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
        lines += [note[:1].upper() + note[1:] + "." for note in plan.notes
                  if note.startswith(("size target", "importance matrix"))]
        lines += list(plan.warnings)
        if error:  # a memory shortfall: the user may still start, at their risk
            lines.insert(0, f"<span style='color:{COLORS['partial']}'>{error}</span>")
        self.summary.setText("<br>".join(lines))
        self.start.setEnabled(True)
        self.start_reason.setText("")

    def show_fitting(self, request: ConvertRequest, text: str) -> None:
        """The standard plan is checked; the fitted one is being measured in a job."""
        if request != self.request():
            return
        self.summary.setText(text)
        self.start.setEnabled(False)
        self.start_reason.setText("Fitting the size: the plan appears when it is measured.")
