"""The menu bar: every main action with its standard shortcut, so the keyboard reaches what
the toolbar shows (Ctrl+O open folder, Ctrl+Shift+C convert, Ctrl+T test, Ctrl+J jobs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtGui import QAction, QKeySequence

from app.gui.about import show_about
from app.gui.appearance import action_icon

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


def build_menus(window: MainWindow) -> None:
    bar = window.menuBar()
    files = bar.addMenu("&File")
    files.addAction(window.open_action)
    files.addAction(window.rescan_action)
    files.addSeparator()
    window.quit_action = QAction("&Quit", window)
    window.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
    window.quit_action.triggered.connect(window.close)
    files.addAction(window.quit_action)

    model = bar.addMenu("&Model")
    model.addAction(window.convert_action)
    model.addAction(window.relayouts.action)
    model.addAction(window.merge_action)
    window.test_action = QAction(action_icon("test"), "&Test…", window)
    window.test_action.setShortcut(QKeySequence("Ctrl+T"))
    window.test_action.setToolTip("Test the selected model: a short generation (Ctrl+T)")
    window.test_action.triggered.connect(window.show_test_tab)
    model.addAction(window.test_action)

    view = bar.addMenu("&View")
    jobs = window.jobs_dock.toggleViewAction()
    jobs.setText("&Jobs")
    jobs.setShortcut(QKeySequence("Ctrl+J"))
    view.addAction(jobs)
    find = QAction("&Find models", window)
    find.setShortcut(QKeySequence.StandardKey.Find)
    find.triggered.connect(lambda: window.search.setFocus())
    view.addAction(find)

    help_menu = bar.addMenu("&Help")
    window.about_action = QAction("&About Modelyard", window)
    window.about_action.triggered.connect(
        lambda: show_about(window, window.status.resources))
    help_menu.addAction(window.about_action)
