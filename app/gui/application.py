"""Start the window. Imports nothing heavy (torch, transformers) so it appears at once."""

from __future__ import annotations

import sys

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app import __version__
from app.gui.appearance import apply_appearance
from app.gui.gc_guard import GuiThreadGarbageCollector
from app.resource_files import resource_path

ICON = resource_path("modelyard.svg")


def create_application(argv: list[str] | None = None) -> QApplication:
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(
        argv if argv is not None else sys.argv[:1])
    app.setApplicationName("Modelyard")
    app.setOrganizationName("Modelyard")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("modelyard")
    if ICON.exists():
        app.setWindowIcon(QIcon(str(ICON)))
    if existing is None:
        apply_appearance(app)
    if app.findChild(GuiThreadGarbageCollector) is None:
        GuiThreadGarbageCollector(parent=app)
    return app


def run_gui() -> int:
    from app.gui.display_check import display_problem
    from app.gui.qt_check import qt_binding_problem

    problem = display_problem() or qt_binding_problem()
    if problem is not None:
        print(f"modelyard: {problem}", file=sys.stderr)
        return 2
    app = create_application()
    from app.gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    return app.exec()
