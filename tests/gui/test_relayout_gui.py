"""Fix expert layout… from the window: offered only for MoE GGUFs, runs as a job, lists the
result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtWidgets import QApplication

from app.gui.details import overview_rows
from app.gui.main_window import MainWindow
from app.gui.relayout_controller import RelayoutDialog
from app.gui.settings import AppSettings


@pytest.fixture()
def window(qtbot, settings: AppSettings, tmp_path: Path,  # type: ignore[no-untyped-def]
           tiny_ggufs: dict[str, Path]) -> MainWindow:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("dense", "moe-stacked"):
        shutil.copy(tiny_ggufs[name], folder / f"{name}.gguf")
    return open_window(qtbot, settings, folder)


def open_dialog() -> RelayoutDialog | None:
    return next((w for w in QApplication.topLevelWidgets()
                 if isinstance(w, RelayoutDialog) and w.isVisible()), None)


def test_fix_expert_layout_writes_the_other_layout(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    action = window.relayouts.action
    assert action in window.table.actions()  # the models table's context menu
    assert window.select_model_path(folder / "dense.gguf")
    assert not action.isEnabled()
    assert window.select_model_path(folder / "moe-stacked.gguf")
    assert action.isEnabled()
    overview = dict(overview_rows(window.selected_model()))
    assert overview["Expert layout"].startswith("stacked: one tensor per weight")
    assert "Current llama.cpp" in overview["Expert layout"]
    action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    buttons = {b.property("layout"): b for b in dialog.choices.buttons()}
    assert not buttons["stacked"].isEnabled() and "(this file)" in buttons["stacked"].text()
    assert buttons["split"].isChecked() and "older llama.cpp" in buttons["split"].text()
    assert "current llama.cpp" in buttons["stacked"].text()
    assert dialog.output.text() == str(folder / "moe-stacked-split-experts.gguf")
    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)  # the job, then the rescan that lists its output
    selected = window.selected_model()
    assert selected is not None and selected.path == folder / "moe-stacked-split-experts.gguf"
    assert selected.moe is not None and selected.moe.layout == "split"
    assert not (folder / "moe-stacked-split-experts.gguf.part").exists()


def test_refused_relayout_says_why_and_queues_nothing(qtbot, window: MainWindow,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = window.settings.folders()[0]
    taken = folder / "taken.gguf"
    taken.write_bytes(b"not ours")
    shown: list[str] = []
    monkeypatch.setattr("app.gui.relayout_controller.QMessageBox.warning",
                        lambda parent, title, text: shown.append(text))
    assert window.select_model_path(folder / "moe-stacked.gguf")
    window.relayouts.action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    dialog.output.setText(str(taken))
    dialog.start.click()
    settle(qtbot, window)
    assert shown and "output already exists" in shown[0]
    assert "--overwrite" not in shown[0]  # no command-line flags in the window
    assert shown[0].endswith("output already exists. choose another name")  # no replace control
    assert taken.read_bytes() == b"not ours"
