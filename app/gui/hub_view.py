"""The Hub view: search the Hugging Face Hub, see a repo's files with size, quant and a fit
badge judged from each GGUF's remote header, and download one on the download queue.

Every network call runs on the background pool; the view only shows what comes back. Errors
arrive as Modelyard's typed errors: offline or unreachable, gated, private, not found.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from PySide6.QtCore import QMimeData, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import ModelyardError
from app.core.estimate.verdict import DEFAULT_CONTEXT, Machine
from app.core.formats.model_info import format_bytes, format_count
from app.core.hub.client import hub_endpoint
from app.core.hub.download import DownloadRequest, RepoDownloadRequest
from app.core.hub.errors import HubAccessError, HubUnavailableError
from app.core.hub.fit import FileFit, RepoFit, fit_listing
from app.core.hub.references import HubReference, parse_hub_reference
from app.core.hub.repo_files import GGUFEntry, RepoListing, list_repo
from app.core.hub.search import SearchPage, SearchQuery, search_models
from app.gui.background import Background
from app.gui.download_queue import DownloadQueue
from app.gui.fit_badge import FIT_ROLE, FitBadgeDelegate, fit_short_text, fit_tooltip
from app.gui.jobs_panel import JobsPanel

RESULT_COLUMNS = ("Model", "Downloads", "Likes", "Modified", "Weights", "Access")
FILE_COLUMNS = ("File", "Quant", "Size", "Arch", "Fit")
LIBRARY_CHOICES = (("Any library", None), ("GGUF", "gguf"), ("Transformers", "transformers"))
SORT_CHOICES = (("Most downloaded", "downloads"), ("Most liked", "likes"),
                ("Recently updated", "recent"))
ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1


def describe_error(error: Exception) -> str:
    """What the view says about a failed Hub call, worded for the window's controls."""
    if isinstance(error, HubUnavailableError):
        why = "offline mode is on" if error.offline_mode else error.reason
        return f"Offline: the Hub cannot be reached ({why}). Local and cached models keep working."
    if isinstance(error, HubAccessError) and error.reason_code == "gated":
        return (f"{error.reason}. Accept the licence on the model's page with your Hugging Face "
                "account, then log in or set HF_TOKEN before starting Modelyard.")
    if isinstance(error, ModelyardError):
        return error.message
    return f"Unexpected error ({type(error).__name__}); see the log."


def hub_reference_in(mime: QMimeData) -> HubReference | None:
    """The Hub repo a dropped or pasted text or web URL names, if any."""
    texts = [u.toString() for u in mime.urls() if not u.isLocalFile()] if mime.hasUrls() else []
    if mime.hasText():
        texts.append(mime.text())
    for text in texts:
        reference = parse_hub_reference(text.strip(), hub_endpoint())
        if reference is not None:
            return reference
    return None


class _FitBadge(FitBadgeDelegate):
    """The fit badge for GGUF rows; other files have no fit and get no pill."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        if index.data(Qt.ItemDataRole.DisplayRole):
            super().paint(painter, option, index)
        else:
            QStyledItemDelegate.paint(self, painter, option, index)


def _item(text: str, sort_value: object | None = None, align_right: bool = False
          ) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if sort_value is not None:
        item.setData(Qt.ItemDataRole.UserRole, sort_value)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().hide()
    table.setAlternatingRowColors(True)
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    return table


class HubView(QWidget):
    """`target` gives the machine to judge fits for; it is called on a background thread."""

    download_started = Signal(int)  # job id on the download queue

    def __init__(self, background: Background, downloads: DownloadQueue,
                 target: Callable[[], Machine], cache_dir: Callable[[], Path | None],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.background, self.downloads = background, downloads
        self.target, self.cache_dir = target, cache_dir
        self.context = DEFAULT_CONTEXT
        self.query: SearchQuery | None = None
        self.page: SearchPage | None = None
        self.listing: RepoListing | None = None
        self.fit: RepoFit | None = None
        self._select_after_listing: str | None = None

        self.search_box = QLineEdit(placeholderText="search the Hub, or paste owner/repo or a "
                                                    "Hub URL")
        self.search_box.setClearButtonEnabled(True)
        self.search_box.setMinimumWidth(140)
        self.library = QComboBox()
        for label, value in LIBRARY_CHOICES:
            self.library.addItem(label, value)
        self.sort = QComboBox()
        for label, value in SORT_CHOICES:
            self.sort.addItem(label, value)
        self.search_button = QPushButton("Search")
        self.status = QLabel("Search the Hugging Face Hub for models.")
        self.status.setWordWrap(True)
        self.results = _table(RESULT_COLUMNS)
        self.more_button = QPushButton("More results")
        self.more_button.setEnabled(False)

        self.repo_title = QLabel("")
        self.repo_title.setWordWrap(True)
        self.files = _table(FILE_COLUMNS)
        fit_column = FILE_COLUMNS.index("Fit")
        self.files.setItemDelegateForColumn(fit_column, _FitBadge(self))
        self.files.horizontalHeader().setSectionResizeMode(fit_column,
                                                           QHeaderView.ResizeMode.Fixed)
        self.files.setColumnWidth(fit_column, 90)
        self.original_note = QLabel("")
        self.original_note.setWordWrap(True)
        self.safetensors_fit = QLabel("")
        self.safetensors_fit.setWordWrap(True)
        self.original_button = QPushButton("Open the original")
        self.original_button.setVisible(False)
        self.download_button = QPushButton("Download")
        self.download_button.setEnabled(False)
        self.recommended_button = QPushButton("Download the recommended one")
        self.recommended_button.setEnabled(False)
        self.all_button = QPushButton("Download all files")
        self.all_button.setToolTip("the whole repo, e.g. a safetensors model to convert")
        self.all_button.setEnabled(False)
        self.downloads_panel = JobsPanel(downloads)

        top = QHBoxLayout()
        for widget in (self.search_box, self.library, self.sort, self.search_button):
            top.addWidget(widget)
        top.setStretch(0, 1)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(top)
        left_layout.addWidget(self.status)
        left_layout.addWidget(self.results)
        left_layout.addWidget(self.more_button)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.repo_title)
        right_layout.addWidget(self.files)
        right_layout.addWidget(self.safetensors_fit)
        right_layout.addWidget(self.original_note)
        # Two rows of buttons and the results above the files: the view takes the table's place
        # in the window, which must still fit a 1024-pixel-wide screen beside the details.
        buttons = QGridLayout()
        buttons.addWidget(self.original_button, 0, 0)
        buttons.addWidget(self.all_button, 0, 1)
        buttons.addWidget(self.recommended_button, 1, 0)
        buttons.addWidget(self.download_button, 1, 1)
        right_layout.addLayout(buttons)
        upper = QSplitter(Qt.Orientation.Vertical)
        upper.addWidget(left)
        upper.addWidget(right)
        upper.setStretchFactor(0, 1)
        upper.setStretchFactor(1, 1)
        outer = QSplitter(Qt.Orientation.Vertical)
        outer.addWidget(upper)
        outer.addWidget(self.downloads_panel)
        outer.setStretchFactor(0, 3)
        outer.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(outer)

        self.search_box.returnPressed.connect(self.search)
        self.search_button.clicked.connect(self.search)
        self.more_button.clicked.connect(self.more)
        self.results.itemSelectionChanged.connect(self._result_selected)
        self.files.itemSelectionChanged.connect(self._file_selected)
        self.download_button.clicked.connect(self.download_selected)
        self.recommended_button.clicked.connect(self.download_recommended)
        self.all_button.clicked.connect(self.download_all)
        self.original_button.clicked.connect(self._open_original)

    # ---- search ------------------------------------------------------------------------------
    def search(self) -> None:
        text = self.search_box.text().strip()
        reference = parse_hub_reference(text, hub_endpoint()) if "/" in text else None
        if reference is not None:
            self.open_reference(reference)
            return
        self.query = SearchQuery(text, library=self.library.currentData(),
                                 sort=self.sort.currentData(), limit=30)
        self.results.setRowCount(0)
        self._request_page(0)

    def more(self) -> None:
        if self.page is not None and self.page.has_more:
            self._request_page(self.page.page + 1)

    def _request_page(self, page: int) -> None:
        assert self.query is not None
        self.status.setText("Searching…")
        self.more_button.setEnabled(False)
        self.background.submit("hub-search", partial(search_models, self.query, page),
                               self._show_page, self._show_error)

    def _show_page(self, page: SearchPage) -> None:
        self.page = page
        self.results.setSortingEnabled(False)
        for model in page.models:
            row = self.results.rowCount()
            self.results.insertRow(row)
            weights = "+".join(label for label, has in (("GGUF", model.has_gguf),
                                                        ("safetensors", model.has_safetensors))
                               if has) or "-"
            modified = model.last_modified.date().isoformat() if model.last_modified else ""
            cells = (_item(model.repo_id), _item(f"{model.downloads:,}", align_right=True),
                     _item(f"{model.likes:,}", align_right=True), _item(modified),
                     _item(weights), _item("gated" if model.gated else ""))
            for column, cell in enumerate(cells):
                self.results.setItem(row, column, cell)
        count = self.results.rowCount()
        self.status.setText(f"{count} model(s)" + (", more available" if page.has_more else "")
                            if count else "No models found.")
        self.more_button.setEnabled(page.has_more)

    def _show_error(self, error: Exception) -> None:
        self.status.setText(describe_error(error))

    def _result_selected(self) -> None:
        rows = self.results.selectionModel().selectedRows()
        if rows:
            self.open_repo(self.results.item(rows[0].row(), 0).text())

    # ---- a repo's files ----------------------------------------------------------------------
    def open_reference(self, reference: HubReference) -> None:
        """Open the repo; a URL of one file also selects that file."""
        self.open_repo(reference.repo_id, reference.revision)
        self._select_after_listing = reference.filename

    def open_repo(self, repo_id: str, revision: str | None = None) -> None:
        """List the repo's files, then judge each GGUF from its remote header."""
        self.listing, self.fit = None, None
        self._select_after_listing = None
        self.files.setRowCount(0)
        self.repo_title.setText(f"{repo_id}: loading…")
        self.original_note.setText("")
        self.safetensors_fit.setText("")
        self.original_button.setVisible(False)
        self.download_button.setEnabled(False)
        self.recommended_button.setEnabled(False)
        self.all_button.setEnabled(False)
        self.background.submit("hub-files", partial(list_repo, repo_id, revision),
                               self._show_listing, self._show_repo_error)

    def _show_repo_error(self, error: Exception) -> None:
        self.repo_title.setText(describe_error(error))

    def _show_listing(self, listing: RepoListing) -> None:
        self.listing = listing
        self.all_button.setEnabled(bool(listing.files))
        gated = " · gated: accept the licence on its page to download" if listing.gated else ""
        self.repo_title.setText(f"{listing.repo_id}: {len(listing.files)} files, "
                                f"{format_bytes(listing.total_size)}{gated}")
        if listing.safetensors is not None and listing.safetensors.parameters:
            self.repo_title.setText(self.repo_title.text() + f" · safetensors "
                                    f"{format_bytes(listing.safetensors.total_size)}, "
                                    f"{format_count(listing.safetensors.parameters)} parameters")
        if listing.quantized and listing.base_models:
            self.original_note.setText(
                f"Quantized from {', '.join(listing.base_models)}: converting from the "
                "original avoids stacking two quantization errors.")
            self.original_button.setVisible(True)
        self.files.setSortingEnabled(False)
        self.files.setRowCount(0)
        ggufs = {name for entry in listing.ggufs for name in entry.files}
        for entry in listing.ggufs:
            self._add_file_row(entry.label, entry.quant or "?", entry.size, entry)
        for file in listing.files:
            if file.name not in ggufs:
                self._add_file_row(file.name, "", file.size or 0, None)
        wanted = self._select_after_listing
        for row in range(self.files.rowCount()):
            entry = self.files.item(row, 0).data(ENTRY_ROLE)
            names = entry.files if isinstance(entry, GGUFEntry) else (entry,)
            if wanted in names:
                self.files.selectRow(row)
        if listing.ggufs or listing.safetensors is not None:
            target = self.target
            context = self.context
            self.background.submit(
                "hub-fit", lambda: fit_listing(listing, target(), context), self._show_fit,
                self._show_fit_error)

    def _add_file_row(self, name: str, quant: str, size: int, entry: GGUFEntry | None) -> None:
        row = self.files.rowCount()
        self.files.insertRow(row)
        first = _item(name)
        first.setData(ENTRY_ROLE, entry if entry is not None else name)
        fit = _item("…" if entry is not None else "")
        self.files.setItem(row, 0, first)
        self.files.setItem(row, 1, _item(quant))
        self.files.setItem(row, 2, _item(format_bytes(size), align_right=True))
        self.files.setItem(row, 3, _item(""))
        self.files.setItem(row, 4, fit)

    def _row_of(self, label: str) -> int | None:
        for row in range(self.files.rowCount()):
            if self.files.item(row, 0).text() == label:
                return row
        return None

    def _show_fit(self, fit: RepoFit) -> None:
        if self.listing is None or fit.listing.repo_id != self.listing.repo_id:
            return
        self.fit = fit
        context_text = f"judged at {fit.context} tokens on {fit.target.name}"
        for file_fit in fit.files:
            row = self._row_of(file_fit.entry.label)
            if row is None:
                continue
            self._show_file_fit(row, file_fit, context_text)
        report = fit.safetensors_report
        if report is not None:
            best = report.recommended
            as_gguf = (f" Converted to GGUF, {best.candidate.quant} is recommended "
                       f"({format_bytes(best.candidate.model.file_size)}, "
                       f"{best.verdict.text.split(':')[0]})." if best is not None else "")
            self.safetensors_fit.setText(f"In transformers: {report.verdict.text}.{as_gguf}")
        elif fit.safetensors_note:
            self.safetensors_fit.setText(f"Fit not judged: {fit.safetensors_note}")
        recommended = fit.recommended
        if recommended is not None:
            label = recommended.entry.quant or recommended.entry.label
            self.recommended_button.setText(f"Download the recommended one ({label})")
            self.recommended_button.setEnabled(True)

    def _show_file_fit(self, row: int, file_fit: FileFit, context_text: str) -> None:
        name = self.files.item(row, 0)
        if file_fit.recommended:
            name.setToolTip("recommended: the best quant that fits this machine")
            font = name.font()
            font.setBold(True)
            name.setFont(font)
        self.files.item(row, 3).setText(file_fit.architecture or "?")
        badge = self.files.item(row, 4)
        badge.setText(("★ " if file_fit.recommended else "") + fit_short_text(file_fit.verdict))
        badge.setData(FIT_ROLE, file_fit.verdict)
        badge.setToolTip(fit_tooltip(file_fit.verdict, context_text))

    def _show_fit_error(self, error: Exception) -> None:
        self.original_note.setText(f"Fit not judged: {describe_error(error)}")

    # ---- downloads ---------------------------------------------------------------------------
    def _file_selected(self) -> None:
        self.download_button.setEnabled(self.selected_entry() is not None)

    def selected_entry(self) -> GGUFEntry | str | None:
        rows = self.files.selectionModel().selectedRows()
        if not rows or self.listing is None:
            return None
        return self.files.item(rows[0].row(), 0).data(ENTRY_ROLE)

    def download_selected(self) -> list[int]:
        entry = self.selected_entry()
        return self._download(entry) if entry is not None else []

    def download_recommended(self) -> list[int]:
        recommended = self.fit.recommended if self.fit is not None else None
        return self._download(recommended.entry) if recommended is not None else []

    def download_all(self) -> list[int]:
        if self.listing is None:
            return []
        return self._download_files(tuple(f.name for f in self.listing.files))

    def _download(self, entry: GGUFEntry | str) -> list[int]:
        return self._download_files(entry.files if isinstance(entry, GGUFEntry) else (entry,))

    def _download_files(self, names: tuple[str, ...]) -> list[int]:
        """One job: a single file, or every shard (or file) in turn."""
        assert self.listing is not None
        listing = self.listing
        request = DownloadRequest(listing.repo_id, names[0], listing.ref,
                                  cache_dir=self.cache_dir()) if len(names) == 1 else \
            RepoDownloadRequest(listing.repo_id, names, listing.ref, cache_dir=self.cache_dir())
        job = self.downloads.submit(request)
        self.download_started.emit(job)
        return [job]

    def _open_original(self) -> None:
        if self.listing is not None and self.listing.base_models:
            self.open_repo(self.listing.base_models[0])
