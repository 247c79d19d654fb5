"""The sources sidebar: all models, the folders the user added, the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtWidgets import QMenu, QStyle, QTreeWidget, QTreeWidgetItem, QWidget

ALL = "all"
HF_CACHE = "hf-cache"
APP_LIBRARIES = "app-libraries"
HUB = "hub"
KEY_ROLE = Qt.ItemDataRole.UserRole


def folder_key(path: Path) -> str:
    return f"folder:{path}"


def key_folder(key: str) -> Path | None:
    return Path(key.removeprefix("folder:")) if key.startswith("folder:") else None


class SourcesPanel(QTreeWidget):
    """Selecting an item filters the models table to what that source found."""

    source_selected = Signal(object)  # a source key, or None for all models
    remove_requested = Signal(str)
    rescan_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setHeaderHidden(True)
        self.setRootIsDecorated(False)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self._group = QTreeWidgetItem(self, ["SOURCES"])
        self._group.setFlags(Qt.ItemFlag.ItemIsEnabled)
        font = self._group.font(0)
        font.setBold(True)
        self._group.setFont(0, font)
        self._items: dict[str, QTreeWidgetItem] = {}
        self._labels: dict[str, str] = {}
        self._add_item(ALL, "All models", QStyle.StandardPixmap.SP_DirHomeIcon, "")
        self.expandAll()
        self.currentItemChanged.connect(self._changed)
        self.setCurrentItem(self._items[ALL])

    def _add_item(self, key: str, label: str, icon: QStyle.StandardPixmap,
                  tooltip: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(self._group, [label])
        item.setData(0, KEY_ROLE, key)
        item.setIcon(0, self.style().standardIcon(icon))
        item.setToolTip(0, tooltip)
        self._items[key] = item
        self._labels[key] = label
        return item

    def set_folders(self, folders: list[Path]) -> None:
        for key in [k for k in self._items if k.startswith("folder:")]:
            if key_folder(key) not in folders:
                self._remove(key)
        for folder in folders:
            key = folder_key(folder)
            if key not in self._items:
                self._add_item(key, folder.name or str(folder), QStyle.StandardPixmap.SP_DirIcon,
                               str(folder))
        self._keep_hf_cache_last()

    def set_hf_cache(self, shown: bool, cache_dir: str) -> None:
        if shown and HF_CACHE not in self._items:
            self._add_item(HF_CACHE, "HF cache", QStyle.StandardPixmap.SP_DriveHDIcon, cache_dir)
        elif not shown and HF_CACHE in self._items:
            self._remove(HF_CACHE)

    def set_app_libraries(self, shown: bool) -> None:
        """Ollama's and LM Studio's models, read in place."""
        if shown and APP_LIBRARIES not in self._items:
            self._add_item(APP_LIBRARIES, "Ollama & LM Studio",
                           QStyle.StandardPixmap.SP_DriveHDIcon,
                           "models in Ollama's store and LM Studio's folders, read in place")
        elif not shown and APP_LIBRARIES in self._items:
            self._remove(APP_LIBRARIES)

    def add_hub(self) -> None:
        """The HUB group: searching the Hugging Face Hub."""
        if HUB in self._items:
            return
        group = QTreeWidgetItem(self, ["HUB"])
        group.setFlags(Qt.ItemFlag.ItemIsEnabled)
        group.setFont(0, self._group.font(0))
        item = QTreeWidgetItem(group, ["Search"])
        item.setData(0, KEY_ROLE, HUB)
        item.setIcon(0, self.style().standardIcon(QStyle.StandardPixmap.SP_FileDialogContentsView))
        item.setToolTip(0, "search the Hugging Face Hub; paste or drop a Hub URL to open a repo")
        self._items[HUB] = item
        self._labels[HUB] = "Search"
        group.setExpanded(True)

    def _keep_hf_cache_last(self) -> None:
        for key in (HF_CACHE, APP_LIBRARIES):
            item = self._items.get(key)
            if item is not None:
                self._group.removeChild(item)
                self._group.addChild(item)

    def _remove(self, key: str) -> None:
        item = self._items.pop(key)
        self._labels.pop(key, None)
        if self.currentItem() is item:
            self.setCurrentItem(self._items[ALL])
        self._group.removeChild(item)

    def set_count(self, key: str, count: int | None, busy: bool = False) -> None:
        item = self._items.get(key)
        if item is None:
            return
        suffix = " (scanning…)" if busy else f" ({count})" if count is not None else ""
        item.setText(0, self._labels[key] + suffix)

    def select(self, key: str) -> None:
        if key in self._items:
            self.setCurrentItem(self._items[key])

    def _changed(self, current: QTreeWidgetItem | None, _previous: object) -> None:
        key = current.data(0, KEY_ROLE) if current else None
        self.source_selected.emit(None if key in (None, ALL) else key)

    def _menu(self, pos: QPoint) -> None:
        item = self.itemAt(pos)
        key = item.data(0, KEY_ROLE) if item else None
        if not key or key in (ALL, HUB):
            return
        menu = QMenu(self)
        menu.addAction("Rescan", lambda: self.rescan_requested.emit(key))
        if key.startswith("folder:"):
            menu.addAction("Remove folder", lambda: self.remove_requested.emit(key))
        menu.exec(self.viewport().mapToGlobal(pos))
