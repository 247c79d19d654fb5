"""`modelyard --window-check`: open the main window, let the event loop show and paint it, say
what was shown, close it. The desktop build runs it on the bundle (offscreen), so a bundle that
lacks a Qt plugin or a module the window imports fails the build rather than a user's start.

It uses throwaway settings, HF cache and logs: nothing of the user's is read or written.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from PySide6.QtCore import QTimer
from PySide6.QtGui import QGuiApplication

# Long enough for the first layout and paint, short enough for a build step.
SHOW_MS = 500
GIVE_UP_MS = 60_000
# The About box's libraries (by its labels) and the module each is imported as.
MODULES = {"torch": "torch", "transformers": "transformers", "gguf": "gguf",
           "llama.cpp (llama-cpp-python)": "llama_cpp", "huggingface_hub": "huggingface_hub",
           "safetensors": "safetensors", "bitsandbytes": "bitsandbytes", "PySide6": "PySide6"}


def about_versions(out: TextIO) -> bool:
    """Write the About box's library versions; False when a library that can be imported has
    no version (a bundle without its metadata, which transformers also reads)."""
    from app.gui.about import library_versions

    versions = library_versions()
    out.write("window check: about: " + ", ".join(f"{label} {version}"
                                                 for label, version in versions) + "\n")
    unknown = [label for label, version in versions if version == "not installed"
               and importlib.util.find_spec(MODULES.get(label, label)) is not None]
    if unknown:
        out.write(f"window check: FAILED: installed without a version: {', '.join(unknown)}\n")
    return not unknown


def run_window_check(out: TextIO = sys.stdout) -> int:
    from app.gui.application import create_application
    from app.gui.display_check import display_problem
    from app.gui.qt_check import qt_binding_problem

    problem = display_problem() or qt_binding_problem()
    if problem is not None:
        out.write(f"window check: {problem}\n")
        return 2
    app = create_application()
    from app.gui.main_window import MainWindow
    from app.gui.settings import AppSettings

    result = {"code": 1}
    with tempfile.TemporaryDirectory(prefix="modelyard-window-check-") as tmp:
        settings = AppSettings(Path(tmp) / "settings.ini")
        settings.set_hf_cache_dir(Path(tmp) / "hf-cache")
        settings.set_log_dir(Path(tmp) / "logs")
        window = MainWindow(settings)

        def check() -> None:
            versions_known = about_versions(out)
            shown = window.isVisible() and not window.grab().isNull()
            size = window.size()
            if shown:
                out.write(f"window check: {window.windowTitle()!r} shown at "
                          f"{size.width()}×{size.height()} on the "
                          f"{QGuiApplication.platformName()} platform\n")
            else:
                out.write("window check: FAILED: the main window was not shown\n")
            result["code"] = 0 if shown and versions_known else 1
            window.close()
            app.quit()

        def give_up() -> None:
            out.write(f"window check: FAILED: no answer within {GIVE_UP_MS // 1000} s\n")
            app.quit()

        window.show()
        QTimer.singleShot(SHOW_MS, check)
        QTimer.singleShot(GIVE_UP_MS, give_up)
        app.exec()
        window.deleteLater()
    out.flush()
    return result["code"]
