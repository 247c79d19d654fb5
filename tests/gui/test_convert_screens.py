"""The convert sheet with its advanced options open, each tab, at 1280×800 and 1024×640: no
control below its size hint, no clipped label, the sheet on the screen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gui_helpers import settle
from PySide6.QtWidgets import QApplication
from test_screenshots import SIZES, problems_in, save, sized

from app.gui.convert_dialog import ConvertDialog
from app.gui.settings import AppSettings

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"
SOURCE = "tiny-llama-2l-rows32-F32.gguf"
TABS = ("options", "importance", "tensors", "size")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_convert_sheet_advanced_tabs(qtbot, settings: AppSettings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                     size: tuple[int, int]) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(DATA / SOURCE, folder / SOURCE)
    window = sized(qtbot, settings, size, folder)
    assert window.select_model_path(folder / SOURCE)
    window.convert_action.trigger()
    settle(qtbot, window)
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, ConvertDialog) and w.isVisible())
    next(b for b in dialog.types.buttons() if b.property("quant") == "Q4_K_M").click()
    dialog.fold.setChecked(True)
    dialog.importance.use_file(DATA / "imatrix.gguf")
    settle(qtbot, window)
    assert dialog.start.isEnabled()
    for index, name in enumerate(TABS):
        dialog.advanced.setCurrentIndex(index)
        dialog.adjustSize()
        qtbot.wait(30)
        save(dialog, f"convert-sheet-{name}", tmp_path, size)
        assert dialog.height() <= size[1], name
        assert problems_in(dialog) == [], name
    dialog.reject()
