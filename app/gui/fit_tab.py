"""The Fit tab: target and context, need against what is usable, every quant with its verdict,
the recommended one a click away.

The tab shows a `FitReport` (plain data) computed elsewhere; it only says what the user changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.estimate.breakdown import MemoryBreakdown
from app.core.estimate.report import FitReport
from app.core.formats.model_info import format_bytes
from app.gui.fit_badge import COLORS

CONTEXT_STEPS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
ZOOM_BELOW = 4  # a need under a quarter of the capacity gets the zoomed scale
SEGMENTS = (("weights", "#3a7bd5"), ("KV cache", "#8e5cc7"), ("compute", "#d98e04"),
            ("overhead", "#8a8f98"))


@dataclass(frozen=True)
class TargetSpec:
    """What the user picked; turned into a core Machine with this machine's numbers later."""

    kind: Literal["machine", "cpu", "custom"] = "machine"
    vram_gib: float = 24.0
    ram_gib: float = 32.0

    def label(self) -> str:
        if self.kind == "custom":
            return f"a {self.vram_gib:g} GiB GPU + {self.ram_gib:g} GiB RAM"
        return "this machine" if self.kind == "machine" else "this machine's CPU only"

    def short_label(self) -> str:
        """For the models table's header: "Fit here", "Fit · CPU only"."""
        if self.kind == "custom":
            return f"{self.vram_gib:g} GiB GPU"
        return "here" if self.kind == "machine" else "CPU only"


class NeedBar(QWidget):
    """One device: stacked weights/KV/compute/overhead against the usable capacity."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(20)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.need = MemoryBreakdown()
        self.capacity = 0

    def set_values(self, need: MemoryBreakdown, capacity: int) -> None:
        self.need, self.capacity = need, capacity
        parts = ", ".join(f"{label} {format_bytes(v)}" for (label, _), v in zip(
            SEGMENTS, (need.weights, need.kv_cache, need.compute, need.overhead), strict=True))
        self.setToolTip(f"needs {format_bytes(need.total)} of {format_bytes(capacity)} usable: "
                        f"{parts}")
        self.update()

    @property
    def zoomed(self) -> bool:
        """A need far below the capacity is drawn against a shorter scale, so its parts can be
        told apart; the capacity mark then lies beyond the right end."""
        return 0 < self.need.total * ZOOM_BELOW < self.capacity

    def scale(self) -> float:
        """Bytes the bar's full width stands for."""
        if self.zoomed:
            return self.need.total * ZOOM_BELOW / 2
        return max(self.need.total, self.capacity, 1)

    def segment_widths(self) -> list[float]:
        width = max(self.width() - 2, 0)
        values = (self.need.weights, self.need.kv_cache, self.need.compute, self.need.overhead)
        return [width * value / self.scale() for value in values]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        scale_to = self.scale()
        painter.setPen(QColor("#9aa0a6"))
        painter.setBrush(self.palette().base())
        painter.drawRoundedRect(rect, 3, 3)
        x = rect.left()
        values = (self.need.weights, self.need.kv_cache, self.need.compute, self.need.overhead)
        painter.setPen(Qt.PenStyle.NoPen)
        for (_, color), value in zip(SEGMENTS, values, strict=True):
            width = rect.width() * value / scale_to
            painter.setBrush(QColor(color))
            painter.drawRect(QRectF(x, rect.top() + 1, width, rect.height() - 2))
            x += width
        if self.zoomed:
            painter.setPen(self.palette().color(self.foregroundRole()))
            painter.drawText(rect.adjusted(0, 0, -6, 0),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             f"usable {format_bytes(self.capacity)} ›")
        elif self.capacity:
            mark = rect.left() + rect.width() * self.capacity / scale_to
            over = self.need.total > self.capacity
            painter.setPen(QColor(COLORS["none"]) if over
                           else self.palette().color(self.foregroundRole()))
            painter.drawLine(int(mark), int(rect.top()) - 1, int(mark), int(rect.bottom()) + 1)
        painter.end()


class FitTab(QWidget):
    parameters_changed = Signal(object, int)  # TargetSpec, context
    convert_requested = Signal(str)  # quant type
    select_requested = Signal(str)  # path of an existing file
    test_requested = Signal()  # the selected file, as it is
    size_offer_requested = Signal(object)  # SizeOffer: convert to that custom mix

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report: FitReport | None = None
        self.target_box = QComboBox()
        self.target_box.addItem("This machine", "machine")
        self.target_box.addItem("CPU only", "cpu")
        self.target_box.addItem("Custom GPU + RAM", "custom")
        self.vram = QDoubleSpinBox(suffix=" GiB VRAM", minimum=0.5, maximum=4096, value=24)
        self.ram = QDoubleSpinBox(suffix=" GiB RAM", minimum=0.5, maximum=8192, value=32)
        self.judge_table = QCheckBox("Judge the models table for this target too")
        self.judge_table.setToolTip("Off: the table's Fit column always says what runs on this "
                                    "machine; the target here only answers \"what if\" for "
                                    "the selected model.")
        self.context = QSlider(Qt.Orientation.Horizontal)
        self.context.setRange(0, len(CONTEXT_STEPS) - 1)
        self.context.setValue(CONTEXT_STEPS.index(4096))
        self.context.setPageStep(1)
        self.context.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.context_label = QLabel()
        self.verdict = QLabel("Select a model.")
        self.verdict.setWordWrap(True)
        self.verdict.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.ram_bar, self.vram_bar = NeedBar(), NeedBar()
        self.ram_text, self.vram_text = QLabel(), QLabel()
        self.legend = QLabel("  ".join(f"<span style='color:{c}'>■</span> {label}"
                                       for label, c in SEGMENTS))
        self.quants = QTreeWidget()
        self.quants.setHeaderLabels(["", "Quant", "Size", "Verdict"])
        self.quants.setRootIsDecorated(False)
        self.quants.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.quants.header().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.quants.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.quants.setColumnWidth(0, 28)
        self.action = QPushButton("Convert")
        self.action.setEnabled(False)
        self.longest = QLabel()
        self.action_reason = QLabel()
        self.action_reason.setWordWrap(True)
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.offer = QLabel()
        self.offer.setWordWrap(True)
        self.offer_action = QPushButton()
        self._build_layout()
        self.target_box.currentIndexChanged.connect(self._changed)
        self.judge_table.toggled.connect(self._changed)
        self.vram.valueChanged.connect(self._changed)
        self.ram.valueChanged.connect(self._changed)
        self.context.valueChanged.connect(self._changed)
        self.quants.currentItemChanged.connect(self._update_action)
        self.action.clicked.connect(self._act)
        self.offer_action.clicked.connect(self._offer_clicked)
        self._update_custom_visibility()
        self.context_label.setText(f"{self.context_value():,} tokens")
        self.show_report(None)

    def _build_layout(self) -> None:
        target_row = QHBoxLayout()
        target_row.addWidget(self.target_box)
        target_row.addWidget(self.vram)
        target_row.addWidget(self.ram)
        target_row.addStretch(1)
        context_row = QHBoxLayout()
        context_row.addWidget(self.context, 1)
        context_row.addWidget(self.context_label)
        form = QFormLayout()
        self.form = form
        form.addRow("Target:", target_row)
        form.addRow("", self.judge_table)
        form.addRow("Context:", context_row)
        form.addRow("Verdict:", self.verdict)
        form.addRow("RAM:", self.ram_bar)
        form.addRow("", self.ram_text)
        form.addRow("VRAM:", self.vram_bar)
        form.addRow("", self.vram_text)
        form.addRow("", self.legend)
        buttons = QHBoxLayout()
        buttons.addWidget(self.longest, 1)
        buttons.addWidget(self.action)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        self.quants_title = QLabel("Ways to run it: this file first, then best quality first; "
                                   "★ recommended")
        self.quants_title.setWordWrap(True)
        layout.addWidget(self.quants_title)
        layout.addWidget(self.quants, 1)
        layout.addLayout(buttons)
        offer_row = QHBoxLayout()
        offer_row.addWidget(self.offer, 1)
        offer_row.addWidget(self.offer_action)
        layout.addLayout(offer_row)
        layout.addWidget(self.action_reason)
        layout.addWidget(self.notes)

    # ---- what the user picked ------------------------------------------------------------
    def target_spec(self) -> TargetSpec:
        return TargetSpec(self.target_box.currentData(), self.vram.value(), self.ram.value())

    def context_value(self) -> int:
        return CONTEXT_STEPS[self.context.value()]

    def set_parameters(self, spec: TargetSpec, context: int) -> None:
        widgets = (self.target_box, self.vram, self.ram, self.context)
        for widget in widgets:
            widget.blockSignals(True)
        self.target_box.setCurrentIndex(max(self.target_box.findData(spec.kind), 0))
        self.vram.setValue(spec.vram_gib)
        self.ram.setValue(spec.ram_gib)
        nearest = min(range(len(CONTEXT_STEPS)), key=lambda i: abs(CONTEXT_STEPS[i] - context))
        self.context.setValue(nearest)
        for widget in widgets:
            widget.blockSignals(False)
        self._update_custom_visibility()
        self.context_label.setText(f"{self.context_value():,} tokens")

    def _update_custom_visibility(self) -> None:
        custom = self.target_box.currentData() == "custom"
        self.vram.setVisible(custom)
        self.ram.setVisible(custom)
        what_if = self.target_box.currentData() != "machine"
        self.judge_table.setVisible(what_if)
        if not what_if and self.judge_table.isChecked():
            self.judge_table.blockSignals(True)
            self.judge_table.setChecked(False)
            self.judge_table.blockSignals(False)

    def _changed(self) -> None:
        self._update_custom_visibility()
        self.context_label.setText(f"{self.context_value():,} tokens")
        self.verdict.setText("Estimating…")
        self.parameters_changed.emit(self.target_spec(), self.context_value())

    # ---- the report ----------------------------------------------------------------------
    def show_pending(self) -> None:
        """A new model or new parameters: nothing of the previous answer stays on screen."""
        self.show_report(None)
        self.verdict.setText("Estimating…")

    def show_error(self, text: str) -> None:
        self.report = None
        self.verdict.setText(text)
        self.quants.clear()
        self.action.setEnabled(False)

    def _show_need(self, visible: bool, gpu: bool) -> None:
        """The need bars only when there is a need to show; VRAM only with a GPU."""
        for widget in (self.ram_bar, self.ram_text, self.legend):
            self.form.setRowVisible(widget, visible)
        for widget in (self.vram_bar, self.vram_text):
            self.form.setRowVisible(widget, visible and gpu)

    def _show_offer(self, report: FitReport | None) -> None:
        """The custom mix that fits where the preferred standard one does not."""
        offer = report.size_offer if report is not None else None
        self.offer.setVisible(offer is not None)
        self.offer_action.setVisible(offer is not None)
        if offer is None:
            return
        self.offer.setText(f"<b>{offer.text}</b> ({offer.verdict.text.split(':')[0]}): each "
                           f"weight gets the type with the least error within "
                           f"{format_bytes(offer.size_bytes)}, more quality than "
                           f"{offer.below}.")
        self.offer_action.setText(f"Convert to a {format_bytes(offer.size_bytes)} mix…")

    def _offer_clicked(self) -> None:
        if self.report is not None and self.report.size_offer is not None:
            self.size_offer_requested.emit(self.report.size_offer)

    def show_report(self, report: FitReport | None) -> None:
        self.report = report
        self._show_offer(report)
        self.quants.clear()
        self.longest.clear()
        self.notes.clear()
        if report is None:
            self.verdict.setText("Select a model to see where it fits.")
            self.ram_bar.set_values(MemoryBreakdown(), 0)
            self.vram_bar.set_values(MemoryBreakdown(), 0)
            self._show_need(False, False)
            self.quants_title.setVisible(False)
            self.quants.setVisible(False)
            self._update_action()
            return
        color = COLORS[report.verdict.kind]
        self.verdict.setText(f"<b style='color:{color}'>{report.verdict.text}</b>")
        estimate = report.verdict.estimate
        target = report.target
        self._show_need(estimate is not None, bool(target.gpu_free))
        ram_need = estimate.ram if estimate else MemoryBreakdown()
        self.ram_bar.set_values(ram_need, target.usable_ram)
        self.ram_text.setText(f"{format_bytes(ram_need.total)} needed of "
                              f"{format_bytes(target.usable_ram)} usable")
        vram_need = MemoryBreakdown()
        for part in estimate.vram if estimate else ():
            vram_need = vram_need + part
        usable_vram = sum(target.usable_vram)
        self.vram_bar.set_values(vram_need, usable_vram)
        self.vram_text.setText(f"{format_bytes(vram_need.total)} needed of "
                               f"{format_bytes(usable_vram)} usable")
        self.quants_title.setVisible(bool(report.candidates))
        self.quants.setVisible(bool(report.candidates))
        title = "Ways to run it: this file first, then best quality first; ★ recommended"
        requantized = next((f.candidate for f in report.candidates
                            if f.candidate.requantizes), None)
        if requantized is not None:
            title += (f". Converting this {requantized.source_quant} file again stacks a "
                      "second quantization error on the first.")
        self.quants_title.setText(title)
        for fit in report.candidates:
            item = QTreeWidgetItem(["★" if fit.recommended else "", fit.candidate.label,
                                    format_bytes(fit.candidate.model.file_size),
                                    fit.verdict.text.split(":")[0] +
                                    ("" if fit.candidate.writable else " (estimate only)")])
            item.setForeground(3, QColor(COLORS[fit.verdict.kind]))
            item.setToolTip(3, fit.verdict.text)
            item.setData(0, Qt.ItemDataRole.UserRole, fit)
            self.quants.addTopLevelItem(item)
            if fit.recommended:
                self.quants.setCurrentItem(item)
        self.longest.setText(f"{report.max_context_of} fully fits up to "
                             f"{report.max_context:,} tokens" if report.max_context else "")
        self.notes.setText("\n".join(report.notes +
                                     (estimate.approximate if estimate else ())))
        self._update_action()

    def _selected_fit(self):  # type: ignore[no-untyped-def]
        item = self.quants.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item else None

    def _update_action(self, *_: object) -> None:
        fit = self._selected_fit()
        self.action.setVisible(fit is not None)
        self.action_reason.setVisible(fit is not None and not fit.candidate.writable)
        if fit is None:
            self.action.setEnabled(False)
            return
        self.action_reason.setText(f"Modelyard cannot write the tensor types {fit.candidate.quant}"
                                   " gives this model yet; its size is an estimate.")
        if fit.candidate.keep:
            self.action.setText("Test this file")
            self.action.setEnabled(True)
        elif fit.candidate.existing:
            self.action.setText(f"Select {fit.candidate.label}")
            self.action.setEnabled(True)
        else:
            self.action.setText(f"Convert to {fit.candidate.quant}")
            self.action.setEnabled(fit.candidate.writable)

    def _act(self) -> None:
        fit = self._selected_fit()
        if fit is None:
            return
        if fit.candidate.keep:
            self.test_requested.emit()
        elif fit.candidate.existing:
            self.select_requested.emit(str(fit.candidate.model.path))
        else:
            self.convert_requested.emit(fit.candidate.quant)
