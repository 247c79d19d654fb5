"""Convert jobs in the window: the sheet, the one-click conversion from the Fit tab, the check
before a job starts, and what happens when it is done (the new model listed, selected, and its
Test tab offered with the source as the comparison reference).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QMessageBox, QWidget

from app.core.convert import (
    ConversionPlan,
    ConvertRequest,
    ConvertResult,
    check_disk,
    check_memory,
    plan_for_type,
)
from app.core.errors import InsufficientResourcesError, ModelyardError
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.verdict import recommend
from app.core.formats.model_info import ModelInfo
from app.core.jobs import JobResult
from app.core.resources import probe_disk
from app.gui.background import Background
from app.gui.convert_dialog import ConvertDialog
from app.gui.fit_controller import FitController, make_target
from app.gui.fit_tab import TargetSpec
from app.gui.worker import JobQueue

THIS_MACHINE = TargetSpec("machine")


@dataclass(frozen=True)
class Checked:
    """A request planned and checked off the UI thread."""

    request: ConvertRequest
    plan: ConversionPlan | None
    error: str | None  # cannot start: bad input, or no disk space
    memory_shortfall: str | None  # may start if the user accepts the risk
    disk_free: int | None


def plan_and_check(request: ConvertRequest, previous: Checked | None = None) -> Checked:
    """Plan `request` and check it against the disk and memory. When only the type or output
    path differ from a `previous` plan, its program is retyped instead of read again."""
    try:
        if (previous is not None and previous.plan is not None and request.target is not None
                and replace(previous.request, out_type=request.out_type,
                            target=request.target) == request):
            plan = plan_for_type(previous.plan, request.out_type, request.target)
        else:
            plan = request.plan()
        check_disk(plan)
    except ModelyardError as exc:
        return Checked(request, None, exc.message, None, None)
    shortfall = None
    try:
        check_memory(plan)
    except InsufficientResourcesError as exc:
        shortfall = exc.message
    return Checked(request, plan, None, shortfall, probe_disk(plan.target.parent).free_bytes)


class ConvertController(QObject):
    converted = Signal(object, object)  # ConvertResult, source path

    def __init__(self, queue: JobQueue, background: Background, fits: FitController,
                 window: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.queue, self.background, self.fits, self.window = queue, background, fits, window
        self._jobs: dict[int, Path] = {}  # job id → source
        queue.job_finished.connect(self._finished)

    def open_sheet(self, model: ModelInfo, preselect: str | None = None) -> ConvertDialog:
        dialog = ConvertDialog(model, preselect, self.window)
        # The sheet writes a file for this machine: the Fit tab's "what if" target answers a
        # question about another one and must not choose the type made here.
        context = self.fits.context
        self.background.submit(
            f"convert-estimates-{id(dialog)}",
            lambda: recommend(conversion_candidates(model), make_target(THIS_MACHINE), context),
            dialog.show_estimates)
        checked_last: list[Checked] = []  # the sheet's latest plan, handed to the job

        def show(checked: Checked) -> None:
            checked_last[:] = [checked]
            dialog.show_plan(checked.request, checked.plan,
                             checked.error or checked.memory_shortfall, checked.disk_free)

        dialog.plan_wanted.connect(lambda request: self.background.submit(
            f"convert-plan-{id(dialog)}",
            lambda: plan_and_check(request, checked_last[0] if checked_last else None), show))
        dialog.accepted.connect(lambda: self._accept(dialog.request(), checked_last))
        dialog.open()
        return dialog

    def _accept(self, request: ConvertRequest | None, checked: list[Checked]) -> None:
        """Start the program the sheet showed; plan again only if the sheet changed since."""
        if checked and checked[0].plan is not None and checked[0].request == request:
            self._decide(checked[0])
        else:
            self._start_checked(request)

    def convert_now(self, model: ModelInfo, out_type: str) -> None:
        """The one-click path: default output name and options."""
        self._start_checked(ConvertRequest(Path(model.path), None, out_type))

    def _start_checked(self, request: ConvertRequest | None) -> None:
        if request is None:
            return
        self.background.submit("convert-check", lambda: plan_and_check(request),
                               self._decide)

    def _decide(self, checked: Checked) -> None:
        if checked.error is not None:
            QMessageBox.warning(self.window, "Cannot convert", checked.error)
            return
        request = checked.request
        if checked.memory_shortfall is not None:
            answer = QMessageBox.question(
                self.window, "Not enough memory?",
                f"{checked.memory_shortfall}.\n\nStart anyway? It may be slow, swap, or be "
                "stopped by the system.")
            if answer != QMessageBox.StandardButton.Yes:
                return
            request = replace(request, check_memory=False)
        self._submit(replace(request, program=checked.plan))

    def _submit(self, request: ConvertRequest) -> int:
        job_id = self.queue.submit(request)
        self._jobs[job_id] = Path(request.source)
        return job_id

    def _finished(self, job_id: int, result: JobResult) -> None:
        source = self._jobs.pop(job_id, None)
        if source is not None and result.status == "done":
            value: ConvertResult = result.value
            self.converted.emit(value, source)

