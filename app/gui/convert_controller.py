"""Convert jobs in the window: the sheet, the one-click conversion from the Fit tab, the check
before a job starts, and what happens when it is done (the new model listed, selected, and its
Test tab offered with the source as the comparison reference).
"""

from __future__ import annotations

from collections.abc import Callable
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
from app.core.convert.importance import attach_importance
from app.core.convert.plan_fitted import FitToSizeRequest
from app.core.errors import BadInputError, InsufficientResourcesError, ModelyardError
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.size_offer import SizeOffer
from app.core.estimate.verdict import recommend
from app.core.formats.model_info import ModelInfo
from app.core.imatrix import ImatrixRequest
from app.core.jobs import JobResult
from app.core.resources import probe_disk, probe_gpus
from app.gui.background import Background
from app.gui.convert_dialog import ConvertDialog
from app.gui.fit_controller import FitController, make_target
from app.gui.fit_tab import TargetSpec
from app.gui.option_words import gui_words
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
    # The request's program before the matrix and the size target: retyped for the next
    # request that differs only in its type or output, without reading the source again.
    base: ConversionPlan | None = None
    error_file: Path | None = None  # the file the error is about (the matrix, the output…)
    fitted: bool = False  # `plan` is the program fitted to the request's size target

    @property
    def needs_fitting(self) -> bool:
        """The standard program is checked; the size target still has to be measured."""
        fitting = self.request.target_size is not None or self.request.fit_gpu_vram is not None
        return fitting and self.plan is not None and not self.fitted


def _unfitted(request: ConvertRequest) -> ConvertRequest:
    return replace(request, imatrix=None, target_size=None, fit_gpu_vram=None,
                   fit_gpu_context=4096)


def plan_and_check(request: ConvertRequest, previous: Checked | None = None) -> Checked:
    """Plan `request` and check it against the disk and memory. When only the type, output
    path, matrix or size target differ from a `previous` plan, its program is retyped instead
    of read again. A size target is not applied here (it measures the weights with torch, in
    a job: `FitToSizeRequest`)."""
    base_request = _unfitted(request)
    base = None
    try:
        if (previous is not None and previous.base is not None and request.target is not None
                and replace(_unfitted(previous.request), out_type=request.out_type,
                            target=request.target) == base_request):
            base = plan_for_type(previous.base, request.out_type, request.target)
        else:
            base = base_request.plan()
        plan = attach_importance(base, request.imatrix) if request.imatrix else base
        return check(request, plan, base)
    except ModelyardError as exc:
        return Checked(request, None, exc.worded(gui_words), None, None, base, exc.path)


def check(request: ConvertRequest, plan: ConversionPlan, base: ConversionPlan | None = None,
          fitted: bool = False) -> Checked:
    """`plan` checked against the disk (an error) and memory (a risk the user may take)."""
    try:
        check_disk(plan)
    except ModelyardError as exc:
        return Checked(request, None, exc.worded(gui_words), None, None, base, exc.path)
    shortfall = None
    try:
        check_memory(plan)
    except InsufficientResourcesError as exc:
        shortfall = exc.message
    return Checked(request, plan, None, shortfall, probe_disk(plan.target.parent).free_bytes,
                   base, fitted=fitted)


def free_imatrix_path(model: ModelInfo) -> Path:
    """Where a computed matrix goes: beside the model, under a name not yet taken."""
    folder = Path(model.path).parent
    for n in range(1, 1000):
        path = folder / f"{model.name}{'' if n == 1 else f'-{n}'}.imatrix.gguf"
        if not path.exists() and not path.with_name(path.name + ".part").exists():
            return path
    raise BadInputError("no free name for the importance matrix", path=folder)


def first_gpu() -> tuple[int, str] | None:
    gpus, _problem = probe_gpus()
    return (gpus[0].free_bytes, gpus[0].name) if gpus else None


class ConvertController(QObject):
    converted = Signal(object, object)  # ConvertResult, source path

    def __init__(self, queue: JobQueue, background: Background, fits: FitController,
                 window: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.queue, self.background, self.fits, self.window = queue, background, fits, window
        self._jobs: dict[int, Path] = {}  # job id → source
        self._fitting: dict[ConvertDialog, int] = {}  # a sheet's running size measurement
        # Jobs the sheet started for itself (fitting a size, computing a matrix) → what to do
        # with their result.
        self._callbacks: dict[int, Callable[[JobResult], None]] = {}
        queue.job_finished.connect(self._finished)
        fits.tab.size_offer_requested.connect(self._convert_to_offer)

    def _convert_to_offer(self, offer: SizeOffer) -> None:
        """The Fit tab's custom mix: the sheet opens on its type with the size target set, so
        the fitted plan is measured and shown before anything is written."""
        if self.fits.model is not None:
            self.open_sheet(self.fits.model, offer.preferred, size_text=offer.size_text)

    def open_sheet(self, model: ModelInfo, preselect: str | None = None,
                   size_text: str | None = None) -> ConvertDialog:
        dialog = ConvertDialog(model, preselect, self.window)
        if size_text is not None:
            dialog.fold.setChecked(True)
            dialog.advanced.setCurrentWidget(dialog.sizing)
            dialog.sizing.choose_size(size_text)
        # The sheet writes a file for this machine: the Fit tab's "what if" target answers a
        # question about another one and must not choose the type made here.
        context = self.fits.context
        self.background.submit(
            f"convert-estimates-{id(dialog)}",
            lambda: recommend(conversion_candidates(model), make_target(THIS_MACHINE), context),
            dialog.show_estimates)
        self.background.submit(f"convert-gpu-{id(dialog)}", first_gpu,
                               lambda gpu: dialog.sizing.set_gpu(*(gpu or (None,))))
        checked_last: list[Checked] = []  # the sheet's latest plan, handed to the job

        def show(checked: Checked) -> None:
            if checked.request != dialog.request():
                return  # the user has changed something since; a newer plan is coming
            checked_last[:] = [checked]
            if checked.needs_fitting:
                dialog.show_fitting(checked.request, "Measuring each weight's error in each "
                                    "type to fit the size; the jobs panel shows how far it "
                                    "is…")
                self._fit(checked, dialog, show)
                return
            dialog.show_plan(checked.request, checked.plan,
                             checked.error or checked.memory_shortfall, checked.disk_free,
                             checked.error_file)

        dialog.plan_wanted.connect(lambda request: self.background.submit(
            f"convert-plan-{id(dialog)}",
            lambda: plan_and_check(request, checked_last[0] if checked_last else None), show))
        dialog.importance.compute_wanted.connect(
            lambda text: self._compute_imatrix(dialog, text))
        dialog.accepted.connect(lambda: self._accept(dialog.request(), checked_last))
        dialog.rejected.connect(lambda: self._stop_fitting(dialog))
        dialog.open()
        return dialog

    def _fit(self, checked: Checked, dialog: ConvertDialog,
             show: Callable[[Checked], None]) -> None:
        """Measure the size target in the job's process; then check and show that program."""
        assert checked.plan is not None
        request = checked.request

        def done(result: JobResult) -> None:
            if self._fitting.get(dialog) == job_id:
                del self._fitting[dialog]
            if result.status == "cancelled":
                return
            if result.status != "done":
                dialog.show_plan(request, None, result.error or "fitting the size stopped",
                                 None)
                return
            fitted: ConversionPlan = result.value
            self.background.submit(f"convert-plan-{id(dialog)}",
                                   lambda: check(request, fitted, checked.base, True), show)

        # One measurement per sheet: a newer request makes the one running useless.
        running = self._fitting.pop(dialog, None)
        if running is not None:
            self.queue.cancel(running)
        job_id = self.queue.submit(FitToSizeRequest(request, checked.plan))
        self._fitting[dialog] = job_id
        self._callbacks[job_id] = done

    def _stop_fitting(self, dialog: ConvertDialog) -> None:
        job_id = self._fitting.pop(dialog, None)
        if job_id is not None:
            self.queue.cancel(job_id)

    def _compute_imatrix(self, dialog: ConvertDialog, text: Path) -> None:
        """Run the imatrix job on the calibration text; the sheet then uses its output."""
        model = dialog.model

        def start(target: Path) -> None:
            job_id = self.queue.submit(ImatrixRequest(Path(model.path), text, target))
            dialog.importance.computing(f"Computing {target.name} from {text.name}; the jobs "
                                        "panel shows its progress…")
            self._callbacks[job_id] = done

        def done(result: JobResult) -> None:
            if result.status == "done":
                dialog.importance.use_file(result.value.output)
            else:
                dialog.importance.show_failure(result.error or f"computing stopped "
                                                               f"({result.status})")

        self.background.submit(f"imatrix-path-{id(dialog)}", lambda: free_imatrix_path(model),
                               start, lambda error: dialog.importance.show_failure(str(error)))

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
        if checked.needs_fitting:
            # Not measured yet (started before the sheet showed the fitted plan): the job
            # fits the size itself, from the request.
            self._submit(request)
            return
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
        callback = self._callbacks.pop(job_id, None)
        if callback is not None:
            callback(result)
            return
        source = self._jobs.pop(job_id, None)
        if source is not None and result.status == "done":
            value: ConvertResult = result.value
            self.converted.emit(value, source)

