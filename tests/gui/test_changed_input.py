"""A model file replaced after the convert sheet checked its plan: the job refuses the plan in
its process, the window says which file changed and that nothing was written, and stays
usable: the next conversion, planned from the file as it is now, runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtWidgets import QApplication

from app.gui.convert_dialog import ConvertDialog
from app.gui.main_window import MainWindow
from app.gui.settings import AppSettings


@pytest.fixture()
def window(qtbot, settings: AppSettings, tmp_path: Path,  # type: ignore[no-untyped-def]
           tiny_models: dict[str, Path]) -> MainWindow:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_models["llama"], folder / "tiny-llama")
    return open_window(qtbot, settings, folder)


def checked_sheet(qtbot, window: MainWindow, model: Path) -> ConvertDialog:  # type: ignore[no-untyped-def]
    assert window.select_model_path(model)
    window.convert_action.trigger()
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, ConvertDialog) and w.isVisible())
    settle(qtbot, window)
    next(b for b in dialog.types.buttons() if b.property("quant") == "Q8_0").click()
    settle(qtbot, window)
    assert dialog.start.isEnabled() and "Writes" in dialog.summary.text()
    return dialog


def test_a_file_replaced_after_the_sheet_checked_fails_the_job_and_nothing_is_written(
        qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    folder = window.settings.folders()[0]
    weights = folder / "tiny-llama" / "model.safetensors"
    dialog = checked_sheet(qtbot, window, folder / "tiny-llama")
    # Replaced by a copy (a re-download): same bytes and size, another file.
    shutil.copyfile(weights, weights.with_suffix(".new"))
    os.replace(weights.with_suffix(".new"), weights)
    dialog.start.click()
    settle(qtbot, window)
    record = next(r for r in window.queue.jobs.values() if r.title.startswith("Convert"))
    assert record.state == "failed"
    assert record.text == (f"{weights}: was replaced by another file since the plan was "
                           "checked. nothing was written; start the job again so that it is "
                           "planned from the file as it is now")
    assert window.jobs_panel._items[record.job_id].text(4) == f"failed: {record.text}"
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-llama"]  # no output, no .part

    checked_sheet(qtbot, window, folder / "tiny-llama").start.click()
    settle(qtbot, window)
    settle(qtbot, window)
    assert (folder / "tiny-llama-Q8_0.gguf").is_file()
