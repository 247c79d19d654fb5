"""The main window: sources | models table | details, the jobs dock and the status bar."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelection, Qt
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeyEvent,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QFileDialog,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QSizePolicy,
    QSplitter,
    QStackedWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from app.core.convert import ConvertResult
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.shape import model_shape
from app.core.estimate.verdict import Verdict, judge
from app.core.formats.model_info import ModelInfo
from app.core.formats.scan import ScanRequest, ScanResult, describe_path
from app.core.generate.doctor import DoctorReport, diagnose
from app.core.hub.download import DownloadResult
from app.core.hub.references import HubReference
from app.core.jobs import JobResult
from app.gui.appearance import action_icon
from app.gui.background import Background
from app.gui.convert_controller import ConvertController
from app.gui.details import DetailsPane
from app.gui.download_queue import DownloadQueue
from app.gui.fit_controller import FitController, make_target
from app.gui.fit_tab import TargetSpec
from app.gui.hub_view import HubView, hub_reference_in
from app.gui.incomplete_banner import IncompleteBanner, may_be_writing
from app.gui.jobs_panel import JobsPanel, is_background_job, job_output, job_seconds
from app.gui.menus import build_menus
from app.gui.merge_dialog import MergeController
from app.gui.models_table import MODEL_ROLE, ModelFilterProxy, ModelTableModel
from app.gui.models_view import FIRST_LAUNCH, ModelsView
from app.gui.notify import Notifier
from app.gui.relayout_controller import RelayoutController
from app.gui.settings import AppSettings
from app.gui.sources import (
    ALL,
    APP_LIBRARIES,
    HF_CACHE,
    HUB,
    SourcesPanel,
    folder_key,
    key_folder,
)
from app.gui.status_bar import ResourceStatusBar
from app.gui.unfinished_downloads import UnfinishedDownloadsBanner
from app.gui.worker import JobQueue


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or AppSettings()
        self.setWindowTitle("Modelyard")
        self.setAcceptDrops(True)
        self.resize(1280, 800)
        self.queue = JobQueue(log_dir=self.settings.log_dir(), parent=self)
        self.queue.job_finished.connect(self._job_finished)
        self._scan_jobs: dict[int, str] = {}  # job id → source key

        self.sources = SourcesPanel()
        self.table_model = ModelTableModel(self)
        self.proxy = ModelFilterProxy(self)
        self.proxy.setSourceModel(self.table_model)
        self.table = self._make_table()
        self.details = DetailsPane(self.queue, self.confirm_fit)
        self.background = Background(self)
        self.fits = FitController(self.table_model, self.details.fit, self.background,
                                  self.settings, conversions=conversion_candidates, parent=self)
        self.details.fit.select_requested.connect(lambda path: self.select_model_path(Path(path)))
        self.details.fit.test_requested.connect(
            lambda: self.details.setCurrentWidget(self.details.test))
        self.details.problems.doctor_requested.connect(self.run_doctor)
        self.converts = ConvertController(self.queue, self.background, self.fits, self, self)
        self.converts.converted.connect(self._converted)
        self.details.fit.convert_requested.connect(self._convert_selected_to)
        self.relayouts = RelayoutController(self.queue, self.background, self, self)
        self.relayouts.relayouted.connect(self._converted)
        self.merges = MergeController(self.queue, self.background, self, self)
        self.merges.merged.connect(self._merged)
        self._select_after_scan: Path | None = None
        # Downloads have their own queue so they run while a conversion runs.
        self.downloads = DownloadQueue(self.settings.log_dir(), self)
        self.downloads.job_finished.connect(self._download_finished)
        self.hub_view = HubView(self.background, self.downloads,
                                lambda: make_target(self.fits.spec), self.settings.hf_cache_dir)
        # Above the table: leftover .part outputs of stopped jobs, and downloads that stopped
        # before the end (found at start), each with what can be done about it.
        self.leftovers = IncompleteBanner(self.background, self._part_in_use)
        self.leftovers.deleted.connect(lambda key, _path: self.scan_source(key))
        self.queue.job_added.connect(self.leftovers.refresh_busy)
        self.queue.job_finished.connect(self.leftovers.refresh_busy)
        self.unfinished = UnfinishedDownloadsBanner(self.background, self.downloads)
        self.unfinished.resumed.connect(lambda download: self.statusBar().showMessage(
            f"Resuming {download.label}; its progress shows under Hub → Search", 10000))
        self.table_page = QWidget()
        page_layout = QVBoxLayout(self.table_page)
        page_layout.setContentsMargins(0, 0, 0, 0)
        page_layout.addWidget(self.leftovers)
        page_layout.addWidget(self.unfinished)
        page_layout.addWidget(self.table, 1)
        self.center = QStackedWidget()
        self.center.addWidget(self.table_page)
        self.center.addWidget(self.hub_view)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.sources)
        splitter.addWidget(self.center)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 2)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([190, 630, 460])
        self.setCentralWidget(splitter)
        self.splitter = splitter

        self.jobs_panel = JobsPanel(self.queue)
        self.jobs_dock = QDockWidget("Jobs", self)
        self.jobs_dock.setObjectName("jobs")
        self.jobs_dock.setWidget(self.jobs_panel)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.jobs_dock)
        self.resizeDocks([self.jobs_dock], [190], Qt.Orientation.Vertical)
        self.queue.job_added.connect(self._job_added)
        self.jobs_panel.test_requested.connect(self.test_output)
        self.notifier = Notifier(self)
        self.confirm_quit: Callable[[list[str]], bool] = self.ask_before_quit

        self.status = ResourceStatusBar(self)
        self.setStatusBar(self.status)
        self.search = QLineEdit(placeholderText="search models…")
        self.search.setClearButtonEnabled(True)
        self.search.setMaximumWidth(320)
        self._make_toolbar()
        build_menus(self)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.table.addActions([self.convert_action, self.relayouts.action])

        self.search.textChanged.connect(self.proxy.set_text)
        self.search.textChanged.connect(self._update_empty_reason)
        self.table.empty.open_requested.connect(self.choose_folder)
        self.sources.source_selected.connect(self._source_selected)
        self.sources.remove_requested.connect(self.remove_source)
        self.sources.rescan_requested.connect(self.scan_source)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self._restore_state()
        # Nothing runs yet: the jobs dock appears with the first job the user starts.
        self.jobs_dock.hide()
        self.sources.set_folders(self.settings.folders())
        self.sources.set_hf_cache(self.settings.show_hf_cache(),
                                  str(self.settings.hf_cache_dir() or "default location"))
        self.sources.set_app_libraries(True)
        self.sources.add_hub()
        self.rescan_all()
        self.unfinished.look(self.settings.hf_cache_dir(), self.settings.folders())

    # ---- construction -------------------------------------------------------------------
    def _make_table(self) -> ModelsView:
        return ModelsView(self.proxy)

    def _make_toolbar(self) -> None:
        bar = QToolBar("Main")
        bar.setObjectName("main-toolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.open_action = QAction(action_icon("open-folder"), "Open folder", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.setToolTip("Add a folder of models (Ctrl+O)")
        self.open_action.triggered.connect(self.choose_folder)
        self.rescan_action = QAction(action_icon("rescan"), "Rescan", self)
        self.rescan_action.setShortcut(QKeySequence.StandardKey.Refresh)
        self.rescan_action.triggered.connect(self.rescan_all)
        self.convert_action = QAction(action_icon("convert"), "Convert…", self)
        self.convert_action.setShortcut(QKeySequence("Ctrl+Shift+C"))
        self.convert_action.setToolTip("Convert the selected model (Ctrl+Shift+C)")
        self.convert_action.triggered.connect(self.convert_selected)
        self.convert_action.setEnabled(False)
        self.merge_action = QAction(action_icon("merge"), "Merge…", self)
        self.merge_action.setShortcut(QKeySequence("Ctrl+M"))
        self.merge_action.setToolTip("Merge models: linear, SLERP, TIES, DARE, LoRA (Ctrl+M)")
        self.merge_action.triggered.connect(self.merge_selected)
        bar.addAction(self.open_action)
        bar.addAction(self.rescan_action)
        bar.addAction(self.convert_action)
        bar.addAction(self.merge_action)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        bar.addWidget(self.search)
        self.addToolBar(bar)
        self.toolbar = bar

    def show_test_tab(self) -> None:
        self.details.setCurrentWidget(self.details.test)

    def test_output(self, path: Path) -> None:
        """A finished job's "Test it": its output selected (once listed), its Test tab open."""
        if self.select_model_path(path, reveal=True):
            self.show_test_tab()
        else:
            self._select_after_scan = path  # the rescan that lists it is still running

    def _restore_state(self) -> None:
        """Size, docks, the three panes' widths, the table's sorting and column widths and
        the jobs panel's split, as the user left them."""
        restore = ((self.restoreGeometry, "geometry"), (self.restoreState, "state"),
                   (self.splitter.restoreState, "splitter"),
                   (self.table.horizontalHeader().restoreState, "table-header"),
                   (self.jobs_panel.splitter.restoreState, "jobs-splitter"))
        for apply, key in restore:
            saved = self.settings.window_state(key)
            if saved is not None:
                apply(saved)

    def _save_state(self) -> None:
        save = (("geometry", self.saveGeometry), ("state", self.saveState),
                ("splitter", self.splitter.saveState),
                ("table-header", self.table.horizontalHeader().saveState),
                ("jobs-splitter", self.jobs_panel.splitter.saveState))
        for key, state in save:
            self.settings.set_window_state(key, state())
        self.settings.sync()

    # ---- sources ---------------------------------------------------------------------------
    def choose_folder(self) -> None:
        start = self.settings.last_dialog_folder() or Path.home()
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of models", str(start))
        if folder:
            self.settings.set_last_dialog_folder(Path(folder).parent)
            self.add_folder(Path(folder))

    def add_folder(self, folder: Path, select: bool = True) -> None:
        folder = folder.expanduser().absolute()
        folders = self.settings.folders()
        if folder not in folders:
            folders.append(folder)
            self.settings.set_folders(folders)
            self.sources.set_folders(folders)
        self.scan_source(folder_key(folder))
        if select:
            self.sources.select(folder_key(folder))

    def remove_source(self, key: str) -> None:
        folder = key_folder(key)
        if folder is None:
            return
        folders = [f for f in self.settings.folders() if f != folder]
        self.settings.set_folders(folders)
        self.sources.set_folders(folders)
        self.table_model.remove_source(key)
        self.leftovers.set_outputs(key, ())

    def rescan_all(self) -> None:
        for folder in self.settings.folders():
            self.scan_source(folder_key(folder))
        if self.settings.show_hf_cache():
            self.scan_source(HF_CACHE)
        self.scan_source(APP_LIBRARIES)

    def scan_source(self, key: str) -> int | None:
        if key in self._scan_jobs.values():
            return None  # already queued; a second scan would find the same
        folder = key_folder(key)
        if folder is not None:
            request = ScanRequest((folder,))
        elif key == HF_CACHE:
            request = ScanRequest((), include_hf_cache=True,
                                  hf_cache_dir=self.settings.hf_cache_dir())
        elif key == APP_LIBRARIES:
            request = ScanRequest((), include_app_libraries=True)
        else:
            return None
        job_id = self.queue.submit(request)
        self._scan_jobs[job_id] = key
        self.sources.set_count(key, None, busy=True)
        self._update_empty_reason()
        return job_id

    def _part_in_use(self, part: Path) -> bool:
        """Whether a job of this window that has not finished may be writing `part`."""
        return any(may_be_writing(r.request, part) for r in self.queue.active()
                   if not is_background_job(r))

    def _job_added(self, job_id: int) -> None:
        if not is_background_job(self.queue.jobs[job_id]):
            self.jobs_dock.show()

    def _notify_if_away(self, job_id: int) -> None:
        record = self.queue.jobs.get(job_id)
        if record is None or is_background_job(record):
            return
        if self.notifier.should_notify(job_seconds(record)):
            output = job_output(record)
            detail = (f"wrote {output.name}" if output is not None and record.state == "done"
                      else record.state + (f": {record.text}" if record.text else ""))
            self.notifier.notify(f"Modelyard: {record.title}", detail,
                                 failed=record.state == "failed")

    def _job_finished(self, job_id: int, result: JobResult) -> None:
        self._notify_if_away(job_id)
        key = self._scan_jobs.pop(job_id, None)
        if key is None:
            return
        if result.status == "done":
            found: ScanResult = result.value
            self.table_model.set_source_models(key, found.models)
            self.leftovers.set_outputs(key, found.incomplete)
            self.sources.set_count(key, len(found.models))
            self.fits.refresh_table()
            self.details.test.compare.set_references(self.table_model.models())
            if self._select_after_scan is not None and self.select_model_path(
                    self._select_after_scan, reveal=True):
                self._select_after_scan = None
                self.details.setCurrentWidget(self.details.test)
            if found.problems:
                self.statusBar().showMessage(
                    f"{len(found.problems)} path(s) could not be scanned; see the job log", 8000)
        else:
            self.sources.set_count(key, None)
            self.statusBar().showMessage(result.error or "scan failed", 8000)
        self._update_empty_reason()

    def _source_selected(self, key: str | None) -> None:
        self.center.setCurrentWidget(self.hub_view if key == HUB else self.table_page)
        self.details.setVisible(key != HUB)  # the Hub view shows its own details
        if key == HUB:
            self.hub_view.context = self.fits.context  # judged like the local models
            return
        self.proxy.set_source(key)
        folder = key_folder(key) if key else None
        if folder is not None:
            self.status.set_disk_path(folder)
        self._update_empty_reason()

    def _update_empty_reason(self, *_: object) -> None:
        """Say why the table is empty: nothing added yet, a scan running, a filter."""
        if self._scan_jobs and self.table_model.rowCount() == 0:
            self.table.set_empty_reason("Looking for models…")
        elif self.table_model.rowCount() == 0:
            self.table.set_empty_reason(FIRST_LAUNCH, offer_open=True)
        elif self.search.text().strip():
            self.table.set_empty_reason(f"No model matches “{self.search.text().strip()}”.")
        else:
            self.table.set_empty_reason("No models found in this source.")

    # ---- selection -----------------------------------------------------------------------
    def _selection_changed(self, selected: QItemSelection, _deselected: QItemSelection) -> None:
        model = self.selected_model()
        self.details.show_model(model)
        self.fits.show_model(model)
        self.relayouts.set_model(model)
        self.convert_action.setEnabled(model is not None and model.format in ("hf", "gguf")
                                       and not model.fatal_problems)

    def confirm_fit(self, request: Any, models: list[ModelInfo],
                    proceed: Callable[[Any], None]) -> None:
        """Before a test job: judge its models on this machine (a "what if" target on the Fit
        tab is not where the job runs); ask if one does not fit."""
        spec = TargetSpec()

        def judge_all() -> list[tuple[ModelInfo, Verdict]]:
            target = make_target(spec)
            return [(m, judge(m, target, min(model_shape(m).n_ctx_train or 4096, 4096)))
                    for m in models]

        def decide(verdicts: list[tuple[ModelInfo, Verdict]]) -> None:
            short = [(m, v) for m, v in verdicts if v.kind == "none"]
            if short:
                model, verdict = short[0]
                answer = QMessageBox.question(
                    self, "It may not fit",
                    f"{model.name}: {verdict.text}.\n\nStart anyway? Loading may swap heavily "
                    "or be stopped by the system.")
                if answer != QMessageBox.StandardButton.Yes:
                    proceed(None)
                    return
            proceed(request)

        self.background.submit("confirm-fit", judge_all, decide,
                               lambda error: proceed(request))

    def run_doctor(self) -> None:
        model = self.selected_model()
        if model is None:
            return
        problems = self.details.problems

        def done(report: DoctorReport) -> None:
            current = self.selected_model()
            if current is not None and current.path == report.path:
                problems.show_findings([(f.severity, f.text, f.action)
                                        for f in report.findings], report.backend)

        self.background.submit("doctor", lambda: diagnose(model), done,
                               lambda error: problems.show_doctor_error(str(error)))

    def selected_model(self) -> ModelInfo | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(MODEL_ROLE) if rows else None

    def select_model_path(self, path: Path, reveal: bool = False) -> bool:
        """Select the model at `path` in the table; with `reveal`, a model the source filter
        hides is shown by switching to all models (the search text is the user's: kept)."""
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            model: ModelInfo = index.data(MODEL_ROLE)
            if model.path == path or path in model.files:
                self.table.selectRow(row)
                self.table.scrollTo(index)
                return True
        if reveal and self.proxy.source() is not None and any(
                m.path == path or path in m.files for m in self.table_model.models()):
            self.sources.select(ALL)
            return self.select_model_path(path)
        return False

    # ---- the Hub ---------------------------------------------------------------------------
    def open_hub_reference(self, reference: HubReference) -> None:
        """Show the Hub view with the repo a pasted or dropped URL or owner/repo names."""
        self.sources.select(HUB)
        self.center.setCurrentWidget(self.hub_view)
        self.hub_view.open_reference(reference)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        """Paste with no text field focused: a Hub URL or owner/repo opens that repo."""
        if event.matches(QKeySequence.StandardKey.Paste):
            reference = hub_reference_in(QGuiApplication.clipboard().mimeData())
            if reference is not None:
                self.open_hub_reference(reference)
                return
        super().keyPressEvent(event)

    def _download_finished(self, job_id: int, result: JobResult) -> None:
        """A finished download joins the local list (the HF cache, or its folder)."""
        done = result.value if isinstance(result.value, list) else [result.value]
        if result.status != "done" or not done or not isinstance(done[0], DownloadResult):
            return
        record = self.downloads.jobs.get(job_id)
        into_cache = record is not None and getattr(record.request, "output_dir", None) is None
        self.statusBar().showMessage(f"Downloaded {len(done)} file(s) from {done[0].repo_id}",
                                     10000)
        if into_cache and self.settings.show_hf_cache():
            self.scan_source(HF_CACHE)
        else:
            self.add_folder(done[0].path.parent)

    # ---- drag and drop -------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        if (mime.hasUrls() and any(u.isLocalFile() for u in mime.urls())) or \
                hub_reference_in(mime) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        """A dropped folder of models is added as a source; a dropped model is listed and
        its convert sheet opens; a dropped Hub URL opens that repo in the Hub view."""
        mime = event.mimeData()
        paths = [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]
        event.acceptProposedAction()
        if not paths:
            reference = hub_reference_in(mime)
            if reference is not None:
                self.open_hub_reference(reference)
            return
        for path in paths:
            self._describe_dropped(path)

    def _describe_dropped(self, path: Path) -> None:
        # Reading the headers is file I/O (a network drive may be slow): off the UI thread.
        self.background.submit(f"drop:{path}", partial(describe_path, path),
                               partial(self._dropped, path),
                               lambda _error: self._dropped(path, None))

    def _dropped(self, path: Path, model: ModelInfo | None) -> None:
        if model is None:
            self.add_folder(path if path.is_dir() else path.parent)
            return
        self.add_folder(model.path.parent)
        if model.format in ("hf", "gguf") and not model.fatal_problems:
            self.converts.open_sheet(model)

    # ---- conversions ---------------------------------------------------------------------
    def convert_selected(self) -> None:
        model = self.selected_model()
        if model is not None:
            self.converts.open_sheet(model)

    def _convert_selected_to(self, quant: str) -> None:
        """The Fit tab's one click opens the sheet on that type: the output's name and place
        are the user's to see and change before anything is written."""
        model = self.selected_model()
        if model is not None:
            self.converts.open_sheet(model, quant)

    def _converted(self, result: ConvertResult, source: Path) -> None:
        """The new model joins the table, gets selected, and its Test tab is offered with the
        source as the reference to compare against."""
        output = Path(result.output)
        folder = output if output.is_dir() else output.parent
        known = [f for f in self.settings.folders() if f == folder or f in folder.parents]
        self._select_after_scan = output
        self.details.test.compare.remember_source(output, source)
        self.statusBar().showMessage(f"Converted: {output.name}. Test it in the Test tab.",
                                     10000)
        if known:
            self.scan_source(folder_key(known[0]))
        else:
            self.add_folder(folder, select=False)  # the user's view stays as it is

    # ---- merges --------------------------------------------------------------------------
    def merge_selected(self) -> None:
        """The merge sheet, with the selected HF model as its first input."""
        model = self.selected_model()
        models = [model.path] if model is not None and model.format == "hf" else []
        folders = self.settings.folders()
        folder = model.path.parent if models else (folders[0] if folders else Path.home())
        self.merges.open_dialog(models, folder)

    def _merged(self, result: Any, parent: Path) -> None:
        self._converted(result, parent)
        self.statusBar().showMessage(f"Merged: {Path(result.output).name}. Test it in the "
                                     "Test tab.", 10000)

    # ---- closing -------------------------------------------------------------------------
    def running_jobs(self) -> list[str]:
        """Titles of the jobs the user started that have not finished."""
        return [r.title for r in self.queue.active() if not is_background_job(r)]

    def ask_before_quit(self, running: list[str]) -> bool:
        """Whether to quit although `running` jobs would be cancelled."""
        if QApplication.platformName() in ("offscreen", "minimal"):
            return True  # nobody can see a question: a headless run must still end
        answer = QMessageBox.question(
            self, "Quit while jobs run?",
            f"{len(running)} job(s) have not finished: {', '.join(running[:3])}.\n\n"
            "Quitting cancels them; nothing half-written is kept.",
            QMessageBox.StandardButton.Cancel | QMessageBox.StandardButton.Yes,
            QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:
        running = self.running_jobs()
        if running and not self.confirm_quit(running):
            event.ignore()
            return
        self._save_state()
        self.status.stop()
        self.queue.shutdown()
        self.downloads.shutdown()
        self.background.wait(5000)
        super().closeEvent(event)
