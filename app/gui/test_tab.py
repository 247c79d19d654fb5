"""The Test tab: a streamed test generation, and a comparison against a reference model.

Both run as jobs on the worker; generated text arrives through a signal relay (the job calls
`on_text` on the worker thread, the relay's signal delivers it on the UI thread).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.generate.compare import CompareRequest, CompareResult
from app.core.generate.compare_severity import Severity
from app.core.generate.request import GenerateRequest, GenerateResult
from app.core.jobs import JobResult
from app.gui.fit_badge import COLORS
from app.gui.kl_plot import KLPlot
from app.gui.worker import JobQueue

DEFAULT_PROMPT = "What is the capital of France?"
# The fit badges' meanings carry over: green is fine, amber is a compromise, red is trouble.
SEVERITY_COLORS: dict[Severity, str] = {
    "indistinguishable": COLORS["gpu"], "minor": COLORS["gpu"],
    "noticeable": COLORS["partial"], "degraded": COLORS["none"]}
# Before a job starts its models are checked against this machine: the gate calls `proceed`
# with the request to start, or None when the user decides not to.
Gate = Callable[[Any, list[ModelInfo], Callable[[Any], None]], None]


class TextRelay(QObject):
    """Lives on the UI thread; `emit_text` may be called from any thread."""

    text = Signal(str)

    def emit_text(self, piece: str) -> None:
        self.text.emit(piece)


def no_gate(request: Any, models: list[ModelInfo], proceed: Callable[[Any], None]) -> None:
    proceed(request)


class _JobPanel(QWidget):
    """A panel that runs one job at a time: gate it, submit it, stop it, show how it ended."""

    def __init__(self, queue: JobQueue, gate: Gate, run_label: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.queue = queue
        self.gate = gate
        self.model: ModelInfo | None = None
        self.job_id: int | None = None
        self.run_button = QPushButton(run_label)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        queue.job_finished.connect(self._finished)

    def show_model(self, model: ModelInfo | None) -> None:
        self.model = model
        self.run_button.setEnabled(model is not None and not model.fatal_problems
                                   and self.job_id is None)

    def launch(self, request: Any, models: list[ModelInfo]) -> None:
        self.run_button.setEnabled(False)
        self.gate(request, models, self._submit)

    def _submit(self, request: Any) -> None:
        if request is None:
            self.show_status("not started")
            self.show_model(self.model)
            return
        self.job_id = self.queue.submit(request)
        self.stop_button.setEnabled(True)
        self.started()

    def stop(self) -> None:
        if self.job_id is not None:
            self.queue.cancel(self.job_id)

    def _finished(self, job_id: int, result: JobResult) -> None:
        if job_id != self.job_id:
            return
        self.job_id = None
        self.stop_button.setEnabled(False)
        self.show_model(self.model)
        if result.status != "done":
            self.show_status(f"<b style='color:#d64541'>{result.status}</b>: {result.error}")
            return
        self.show_result(result.value)

    def started(self) -> None:
        """The job is on its way."""

    def show_status(self, text: str) -> None:
        raise NotImplementedError

    def show_result(self, value: Any) -> None:
        raise NotImplementedError


class GeneratePanel(_JobPanel):
    def __init__(self, queue: JobQueue, gate: Gate = no_gate,
                 parent: QWidget | None = None) -> None:
        super().__init__(queue, gate, "Generate", parent)
        self.relay = TextRelay(self)
        self.prompt = QPlainTextEdit(DEFAULT_PROMPT)
        self.prompt.setMaximumHeight(70)
        self.system = QLineEdit(placeholderText="system prompt (optional)")
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=128)
        self.backend = QComboBox()
        for label, value in (("Automatic", "auto"), ("llama.cpp", "llama.cpp"),
                             ("transformers", "transformers")):
            self.backend.addItem(label, value)
        self.output = QPlainTextEdit(readOnly=True)
        self.output.setPlaceholderText("The reply streams here.")
        self.stats = QLabel()
        self.stats.setWordWrap(True)
        self.stats.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        options = QHBoxLayout()
        options.addWidget(QLabel("Max tokens"))
        options.addWidget(self.max_tokens)
        options.addWidget(QLabel("Backend"))
        options.addWidget(self.backend)
        options.addStretch(1)
        # The buttons get a row of their own so the details pane stays narrow enough for the
        # models table beside it in a 1024-wide window.
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.prompt)
        layout.addWidget(self.system)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addWidget(self.output, 1)
        layout.addWidget(self.stats)

        self.relay.text.connect(self._append)
        self.run_button.clicked.connect(self.start)
        queue.job_changed.connect(self._changed)

    def start(self) -> None:
        if self.model is None or self.job_id is not None:
            return
        request = GenerateRequest(
            Path(self.model.path), self.prompt.toPlainText(),
            max_tokens=self.max_tokens.value(), system=self.system.text().strip() or None,
            backend=self.backend.currentData(), on_text=self.relay.emit_text)
        self.output.clear()
        self.stats.setText(f"checking that {self.model.name} fits…")
        self.launch(request, [self.model])

    def started(self) -> None:
        self.stats.setText("loading…")

    def show_status(self, text: str) -> None:
        self.stats.setText(text)

    def _append(self, piece: str) -> None:
        self.output.moveCursor(QTextCursor.MoveOperation.End)
        self.output.insertPlainText(piece)

    def _changed(self, job_id: int) -> None:
        if job_id == self.job_id:
            record = self.queue.jobs[job_id]
            if record.state == "queued":
                self.stats.setText("waiting for the jobs before it…")
            elif record.text:
                self.stats.setText(record.text)

    def show_result(self, value: GenerateResult) -> None:
        self.stats.setText(
            f"{value.backend} on {value.device} · loaded in {value.load_s:.1f} s · "
            f"prompt {value.prompt_tokens_per_s:.1f} tok/s · "
            f"{value.n_generated} tokens at {value.tokens_per_s:.1f} tok/s · "
            f"peak {format_bytes(value.peak_bytes)} RAM"
            + (f", {format_bytes(value.peak_vram_bytes)} VRAM" if value.peak_vram_bytes else "")
            + f" · {value.prompt_format} · stopped by {value.stop_reason.replace('_', ' ')}")


class ComparePanel(_JobPanel):
    def __init__(self, queue: JobQueue, gate: Gate = no_gate,
                 parent: QWidget | None = None) -> None:
        super().__init__(queue, gate, "Compare", parent)
        self.text_file: Path | None = None
        self.models: list[ModelInfo] = []
        self.sources: dict[str, str] = {}  # conversion output → its source
        self.reference = QComboBox()
        self.reference.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.text_button = QPushButton("Bundled sample text")
        self.verdict = QLabel("Pick the reference this model came from, then Compare.")
        self.verdict.setWordWrap(True)
        self.severity = QLabel()
        self.severity.setObjectName("severity")
        self.severity.hide()
        self.noise_floor = QLabel("")
        self.noise_floor.setWordWrap(True)
        self.numbers: dict[str, QLabel] = {}
        grid = QGridLayout()
        labels = (("ppl_ref", "Perplexity, reference"), ("ppl_candidate", "Perplexity, this"),
                  ("kl_mean", "KL mean"), ("kl_p99", "KL 99th pct"),
                  ("top1_agreement", "Top-1 agreement"), ("n_tokens", "Tokens"))
        for index, (key, label) in enumerate(labels):
            value = QLabel("–")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.numbers[key] = value
            grid.addWidget(QLabel(label + ":"), index // 2, (index % 2) * 2)
            grid.addWidget(value, index // 2, (index % 2) * 2 + 1)
        self.plot = KLPlot()
        form = QFormLayout()
        form.addRow("Reference:", self.reference)
        form.addRow("Text:", self.text_button)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        results = QGroupBox("Result")
        results_layout = QVBoxLayout(results)
        verdict_row = QHBoxLayout()
        verdict_row.addWidget(self.severity, 0, Qt.AlignmentFlag.AlignTop)
        verdict_row.addWidget(self.verdict, 1)
        results_layout.addLayout(verdict_row)
        results_layout.addWidget(self.noise_floor)
        results_layout.addLayout(grid)
        results_layout.addWidget(self.plot, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(results, 1)
        self.text_button.clicked.connect(self._choose_text)
        self.run_button.clicked.connect(self.start)

    def set_references(self, models: list[ModelInfo]) -> None:
        """The models a comparison can use as its reference (the table's, this one aside)."""
        self.models = models
        self._fill_references()

    def remember_source(self, candidate: Path, source: Path) -> None:
        """A conversion's output is compared with what it came from unless the user picks."""
        self.sources[str(candidate)] = str(source)

    def _fill_references(self) -> None:
        current = self.reference.currentData()
        if self.model is not None:
            current = self.sources.get(str(self.model.path), current)
        self.reference.clear()
        for model in self.models:
            if self.model is not None and model.path == self.model.path:
                continue
            if model.format in ("hf", "gguf") and not model.fatal_problems:
                self.reference.addItem(f"{model.name} ({model.format.upper()})",
                                       str(model.path))
        index = self.reference.findData(current) if current is not None else -1
        if index >= 0:
            self.reference.setCurrentIndex(index)

    def show_model(self, model: ModelInfo | None) -> None:
        super().show_model(model)
        self._fill_references()

    def _choose_text(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Text to compare on", str(Path.home()),
                                              "Text (*.txt *.md);;All files (*)")
        if name:
            self.text_file = Path(name)
            self.text_button.setText(self.text_file.name)

    def start(self) -> None:
        reference = self.reference.currentData()
        if self.model is None or reference is None or self.job_id is not None:
            return
        request = CompareRequest(Path(reference), Path(self.model.path),
                                 text_file=self.text_file)
        models = [m for m in self.models if str(m.path) == reference] + [self.model]
        self.launch(request, models)

    def started(self) -> None:
        self.severity.hide()
        self.verdict.setText("comparing… (the reference runs first, then this model)")

    def show_status(self, text: str) -> None:
        self.severity.hide()
        self.verdict.setText(text)

    def show_severity(self, severity: Severity) -> None:
        self.severity.setText(severity)
        self.severity.setStyleSheet(
            f"QLabel#severity {{ background: {SEVERITY_COLORS[severity]}; color: white; "
            "border-radius: 8px; padding: 1px 8px; font-weight: bold; }")
        self.severity.show()

    def show_result(self, value: CompareResult) -> None:
        self.show_severity(value.severity)
        self.verdict.setText(value.verdict)
        self.noise_floor.setText(
            f"Noise floor: KL {value.noise_floor:.0e} (reference in {value.reference_dtype}); "
            "smaller differences cannot be resolved.")
        formats = {"ppl_ref": "{:.3f}", "ppl_candidate": "{:.3f}", "kl_mean": "{:.3g}",
                   "kl_p99": "{:.3g}", "top1_agreement": "{:.1%}", "n_tokens": "{:,}"}
        for key, label in self.numbers.items():
            label.setText(formats[key].format(getattr(value, key)))
        self.plot.set_values(value.per_token_kl, value.noise_floor)


class TestTab(QTabWidget):
    def __init__(self, queue: JobQueue, gate: Gate = no_gate,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.generate = GeneratePanel(queue, gate)
        self.compare = ComparePanel(queue, gate)
        self.addTab(self.generate, "Generate")
        self.addTab(self.compare, "Compare")

    def show_model(self, model: ModelInfo | None) -> None:
        self.generate.show_model(model)
        self.compare.show_model(model)
