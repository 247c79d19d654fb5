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
    QAbstractItemView,
    QDockWidget,
    QFileDialog,
    QHeaderView,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QSizePolicy,
    QSplitter,
    QStackedWidget,
    QStyle,
    QTableView,
    QToolBar,
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
from app.gui.background import Background
from app.gui.convert_controller import ConvertController
from app.gui.details import DetailsPane
from app.gui.download_queue import DownloadQueue
from app.gui.fit_badge import FitBadgeDelegate
from app.gui.fit_controller import FitController, make_target
from app.gui.hub_view import HubView, hub_reference_in
from app.gui.jobs_panel import JobsPanel
from app.gui.merge_dialog import MergeController
from app.gui.models_table import COLUMN_INDEX, MODEL_ROLE, ModelFilterProxy, ModelTableModel
from app.gui.relayout_controller import RelayoutController
from app.gui.settings import AppSettings
from app.gui.sources import (
    APP_LIBRARIES,
    HF_CACHE,
    HUB,
    SourcesPanel,
    folder_key,
    key_folder,
)
from app.gui.status_bar import ResourceStatusBar
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
        self.center = QStackedWidget()
        self.center.addWidget(self.table)
        self.center.addWidget(self.hub_view)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.sources)
        splitter.addWidget(self.center)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 2)
        splitter.setSizes([200, 700, 380])
        self.setCentralWidget(splitter)
        self.splitter = splitter

        self.jobs_panel = JobsPanel(self.queue)
        self.jobs_dock = QDockWidget("Jobs", self)
        self.jobs_dock.setObjectName("jobs")
        self.jobs_dock.setWidget(self.jobs_panel)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.jobs_dock)
        self.resizeDocks([self.jobs_dock], [190], Qt.Orientation.Vertical)

        self.status = ResourceStatusBar(self)
        self.setStatusBar(self.status)
        self.search = QLineEdit(placeholderText="search models…")
        self.search.setClearButtonEnabled(True)
        self.search.setMaximumWidth(320)
        self._make_toolbar()
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.table.addActions([self.convert_action, self.relayouts.action])

        self.search.textChanged.connect(self.proxy.set_text)
        self.sources.source_selected.connect(self._source_selected)
        self.sources.remove_requested.connect(self.remove_source)
        self.sources.rescan_requested.connect(self.scan_source)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self._restore_state()
        self.sources.set_folders(self.settings.folders())
        self.sources.set_hf_cache(self.settings.show_hf_cache(),
                                  str(self.settings.hf_cache_dir() or "default location"))
        self.sources.set_app_libraries(True)
        self.sources.add_hub()
        self.rescan_all()

    # ---- construction -------------------------------------------------------------------
    def _make_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().hide()
        table.setAlternatingRowColors(True)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        table.setItemDelegateForColumn(COLUMN_INDEX["Fit"], FitBadgeDelegate(table))
        return table

    def _make_toolbar(self) -> None:
        bar = QToolBar("Main")
        bar.setObjectName("main-toolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        style = self.style()
        self.open_action = QAction(style.standardIcon(QStyle.StandardPixmap.SP_DirOpenIcon),
                                   "Open folder", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.choose_folder)
        self.rescan_action = QAction(style.standardIcon(QStyle.StandardPixmap.SP_BrowserReload),
                                     "Rescan", self)
        self.rescan_action.setShortcut(QKeySequence.StandardKey.Refresh)
        self.rescan_action.triggered.connect(self.rescan_all)
        self.convert_action = QAction(style.standardIcon(QStyle.StandardPixmap.SP_ArrowRight),
                                      "Convert…", self)
        self.convert_action.setShortcut(QKeySequence("Ctrl+Shift+C"))
        self.convert_action.setToolTip("Convert the selected model (Ctrl+Shift+C)")
        self.convert_action.triggered.connect(self.convert_selected)
        self.convert_action.setEnabled(False)
        self.merge_action = QAction(style.standardIcon(QStyle.StandardPixmap.SP_FileDialogListView),
                                    "Merge…", self)
        self.merge_action.setShortcut(QKeySequence("Ctrl+M"))
        self.merge_action.setToolTip("Merge models: linear, SLERP, TIES, DARE, LoRA (Ctrl+M)")
        self.merge_action.triggered.connect(self.merge_selected)
        find = QAction(self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(lambda: self.search.setFocus())
        self.addAction(find)
        bar.addAction(self.open_action)
        bar.addAction(self.rescan_action)
        bar.addAction(self.convert_action)
        bar.addAction(self.merge_action)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        bar.addWidget(spacer)
        bar.addWidget(self.search)
        self.addToolBar(bar)

    def _restore_state(self) -> None:
        geometry = self.settings.window_state("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.window_state("state")
        if state is not None:
            self.restoreState(state)

    # ---- sources ---------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of models", str(Path.home()))
        if folder:
            self.add_folder(Path(folder))

    def add_folder(self, folder: Path) -> None:
        folder = folder.expanduser().absolute()
        folders = self.settings.folders()
        if folder not in folders:
            folders.append(folder)
            self.settings.set_folders(folders)
            self.sources.set_folders(folders)
        self.scan_source(folder_key(folder))
        self.sources.select(folder_key(folder))

    def remove_source(self, key: str) -> None:
        folder = key_folder(key)
        if folder is None:
            return
        folders = [f for f in self.settings.folders() if f != folder]
        self.settings.set_folders(folders)
        self.sources.set_folders(folders)
        self.table_model.remove_source(key)

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
        return job_id

    def _job_finished(self, job_id: int, result: JobResult) -> None:
        key = self._scan_jobs.pop(job_id, None)
        if key is None:
            return
        if result.status == "done":
            found: ScanResult = result.value
            self.table_model.set_source_models(key, found.models)
            self.sources.set_count(key, len(found.models))
            self.fits.refresh_table()
            self.details.test.compare.set_references(self.table_model.models())
            if self._select_after_scan is not None and self.select_model_path(
                    self._select_after_scan):
                self._select_after_scan = None
                self.details.setCurrentWidget(self.details.test)
            if found.problems:
                self.statusBar().showMessage(
                    f"{len(found.problems)} path(s) could not be scanned; see the job log", 8000)
        else:
            self.sources.set_count(key, None)
            self.statusBar().showMessage(result.error or "scan failed", 8000)

    def _source_selected(self, key: str | None) -> None:
        self.center.setCurrentWidget(self.hub_view if key == HUB else self.table)
        self.details.setVisible(key != HUB)  # the Hub view shows its own details
        if key == HUB:
            self.hub_view.context = self.fits.context  # judged like the local models
            return
        self.proxy.set_source(key)
        folder = key_folder(key) if key else None
        if folder is not None:
            self.status.set_disk_path(folder)

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
        """Before a test job: judge its models on this machine; ask if one does not fit."""
        spec = self.fits.spec

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

    def select_model_path(self, path: Path) -> bool:
        for row in range(self.proxy.rowCount()):
            index = self.proxy.index(row, 0)
            model: ModelInfo = index.data(MODEL_ROLE)
            if model.path == path or path in model.files:
                self.table.selectRow(row)
                self.table.scrollTo(index)
                return True
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
        model = self.selected_model()
        if model is not None:
            self.converts.convert_now(model, quant)

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
            self.add_folder(folder)

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
    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.set_window_state("geometry", self.saveGeometry())
        self.settings.set_window_state("state", self.saveState())
        self.settings.sync()
        self.status.stop()
        self.queue.shutdown()
        self.downloads.shutdown()
        self.background.wait(5000)
        super().closeEvent(event)
