"""Fix expert layout…: rewrite a MoE GGUF with its experts stacked or split, as a job.

The sheet says what each layout is for and which one the file has; the plan is made and the
disk checked off the UI thread; the job runs on the queue like a conversion, and its output
joins the table like one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from app.core.convert.job import ConvertResult, check_disk
from app.core.convert.relayout import (
    LAYOUTS,
    PlannedRelayout,
    RelayoutRequest,
    default_relayout_path,
)
from app.core.errors import ModelyardError
from app.core.formats.gguf_model import GGUF_EXPERT_LAYOUTS
from app.core.formats.model_info import ModelInfo
from app.core.jobs import JobResult
from app.gui.background import Background
from app.gui.option_words import relayout_words
from app.gui.worker import JobQueue

# What each choice produces, in the sheet's words.
CHOICES = {
    "stacked": "Stacked experts — loads in current llama.cpp, llama-cpp-python, Ollama and "
               f"LM Studio ({GGUF_EXPERT_LAYOUTS['stacked']})",
    "split": "One tensor per expert — for older llama.cpp builds and runtimes that expect "
             f"split experts ({GGUF_EXPERT_LAYOUTS['split']})",
}


def can_relayout(model: ModelInfo | None) -> bool:
    """A readable MoE GGUF with expert tensors (in either layout, or a mix of both)."""
    return (model is not None and model.format == "gguf" and model.moe is not None
            and model.moe.layout is not None
            and all(p.kind == "expert-layout" for p in model.fatal_problems))


class RelayoutDialog(QDialog):
    def __init__(self, model: ModelInfo, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.setWindowTitle(f"Fix expert layout — {model.name}")
        current = model.moe.layout if model.moe else None
        intro = QLabel(f"The experts of {model.name} are {current}. Writes a copy with the "
                       "layout you choose by moving the experts' bytes: nothing is requantized "
                       "and the original is only read.")
        intro.setWordWrap(True)
        self.choices = QButtonGroup(self)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        for name in LAYOUTS:
            button = QRadioButton(CHOICES[name] + ("  (this file)" if name == current else ""))
            button.setProperty("layout", name)
            button.setEnabled(name != current)
            button.setChecked(name != current)
            self.choices.addButton(button)
            layout.addWidget(button)
        self.output = QLineEdit(str(default_relayout_path(model, self.chosen_layout())))
        self._default_output = self.output.text()
        self.choices.buttonToggled.connect(self._layout_changed)
        layout.addWidget(QLabel("Output file:"))
        layout.addWidget(self.output)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.start = buttons.addButton("Write copy", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def chosen_layout(self) -> str:
        checked = self.choices.checkedButton()
        return str(checked.property("layout")) if checked else "stacked"

    def _layout_changed(self) -> None:
        if self.output.text() == self._default_output:  # follow the choice unless edited
            self._default_output = str(default_relayout_path(self.model, self.chosen_layout()))
            self.output.setText(self._default_output)

    def request(self) -> RelayoutRequest:
        return RelayoutRequest(Path(self.model.path), Path(self.output.text().strip()),
                               self.chosen_layout())


@dataclass(frozen=True)
class CheckedRelayout:
    request: RelayoutRequest
    job: PlannedRelayout | None
    error: str | None


def plan_and_check(request: RelayoutRequest) -> CheckedRelayout:
    """Plan (reads headers) and check the disk: refused input never reaches the queue, and
    the job runs the plan made here."""
    try:
        planned = request.plan()
        check_disk(planned.disk_check_plan())
    except ModelyardError as exc:
        return CheckedRelayout(request, None, exc.worded(relayout_words))
    return CheckedRelayout(request, PlannedRelayout.of(request, planned), None)


class RelayoutController(QObject):
    relayouted = Signal(object, object)  # ConvertResult, source path

    def __init__(self, queue: JobQueue, background: Background, window: QWidget,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.queue, self.background, self.window = queue, background, window
        self.model: ModelInfo | None = None
        self._jobs: dict[int, Path] = {}  # job id → source
        self.action = QAction("Fix expert layout…", window)
        self.action.setToolTip("Write a copy of the selected MoE GGUF with its experts stacked "
                               "(current llama.cpp) or one tensor per expert (older runtimes)")
        self.action.setEnabled(False)
        self.action.triggered.connect(self._triggered)
        queue.job_finished.connect(self._finished)

    def set_model(self, model: ModelInfo | None) -> None:
        self.model = model
        self.action.setEnabled(can_relayout(model))

    def _triggered(self) -> None:
        if can_relayout(self.model):
            assert self.model is not None
            self.open_dialog(self.model)

    def open_dialog(self, model: ModelInfo) -> RelayoutDialog:
        dialog = RelayoutDialog(model, self.window)
        dialog.accepted.connect(lambda: self.start(dialog.request()))
        dialog.open()
        return dialog

    def start(self, request: RelayoutRequest) -> None:
        self.background.submit("relayout-check", lambda: plan_and_check(request), self._decide)

    def _decide(self, checked: CheckedRelayout) -> None:
        if checked.job is None:
            QMessageBox.warning(self.window, "Cannot fix the expert layout",
                                checked.error or "the relayout could not be planned")
            return
        job_id = self.queue.submit(checked.job)
        self._jobs[job_id] = Path(checked.request.source)

    def _finished(self, job_id: int, result: JobResult) -> None:
        source = self._jobs.pop(job_id, None)
        if source is not None and result.status == "done":
            value: ConvertResult = result.value
            self.relayouted.emit(value, source)
