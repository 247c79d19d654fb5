"""The Fit column and the Fit tab, driven headless."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtCore import Qt

from app.gui.fit_tab import CONTEXT_STEPS
from app.gui.main_window import MainWindow
from app.gui.models_table import COLUMN_INDEX
from app.gui.settings import AppSettings


@pytest.fixture()
def quants(tmp_path: Path, smollm2_gguf: Path, kquants_reference: Path) -> Path:
    """A folder of one model in several quants (the reference tiny llama), plus SmolLM2."""
    folder = tmp_path / "quants"
    folder.mkdir()
    for name in ("F32", "Q4_K_M"):
        shutil.copy(kquants_reference / f"tiny-llama-{name}.gguf", folder)
    shutil.copy(kquants_reference / "tiny-llama-pure-Q8_0.gguf", folder / "tiny-llama-Q8_0.gguf")
    (folder / smollm2_gguf.name).symlink_to(smollm2_gguf)
    return folder


@pytest.fixture()
def window(qtbot, settings: AppSettings, quants: Path) -> MainWindow:  # type: ignore[no-untyped-def]
    return open_window(qtbot, settings, quants)



def fit_texts(win: MainWindow) -> dict[str, str]:
    column = COLUMN_INDEX["Fit"]
    return {win.proxy.index(r, 0).data(): win.proxy.index(r, column).data()
            for r in range(win.proxy.rowCount())}


def test_fit_column_fills_after_a_scan(window: MainWindow) -> None:
    texts = fit_texts(window)
    assert len(texts) == 4
    assert not {"…", "?", "no"} & set(texts.values())  # every model judged, all fit here
    row = next(r for r in range(window.proxy.rowCount())
               if window.proxy.index(r, 0).data() == "SmolLM2-135M-Instruct.Q4_1")
    tooltip = window.proxy.index(row, COLUMN_INDEX["Fit"]).data(Qt.ItemDataRole.ToolTipRole)
    assert "weights" in tooltip and "KV" in tooltip and "at 4,096 tokens" in tooltip


def test_custom_target_updates_the_tab_not_the_table(qtbot, window: MainWindow,
                                                      quants: Path) -> None:
    assert window.select_model_path(quants / "tiny-llama-Q4_K_M.gguf")
    settle(qtbot, window)
    table_before = fit_texts(window)
    tab = window.details.fit
    tab.target_box.setCurrentIndex(tab.target_box.findData("custom"))
    tab.vram.setValue(24)
    tab.ram.setValue(64)
    settle(qtbot, window)
    # the table stays judged for this machine (no GPU here); the "what if" is the tab's alone
    assert fit_texts(window) == table_before
    assert tab.verdict.text().count("fits on GPU") == 1
    labels = [tab.quants.topLevelItem(i).text(1) for i in range(tab.quants.topLevelItemCount())]
    existing = [label for label in labels if not label.endswith("(convert)")]
    assert existing == ["Q4_K_M (keep this file)", "tiny-llama-F32", "tiny-llama-Q8_0"]
    assert "Q2_K (convert)" in labels  # requantizing below the source's Q4_K_M is offered
    assert tab.quants.topLevelItem(0).text(0) == "★"  # the file as it is fits: keep it
    assert window.settings.fit_parameters()[0] == "machine"  # a "what if" is not remembered
    # a tiny GPU: the tab no longer says it fits on the GPU; the table is unchanged
    tab.vram.setValue(0.5)
    settle(qtbot, window)
    assert "fits on GPU" not in tab.verdict.text()
    assert fit_texts(window) == table_before


def test_context_slider_and_select_action(qtbot, window: MainWindow, quants: Path) -> None:
    assert window.select_model_path(quants / "SmolLM2-135M-Instruct.Q4_1.gguf")
    settle(qtbot, window)
    tab = window.details.fit
    assert tab.report is not None and tab.report.context == 4096
    tab.context.setValue(CONTEXT_STEPS.index(8192))
    settle(qtbot, window)
    assert tab.report.context == 8192
    assert tab.report.verdict.estimate.ram.kv_cache == 180 * 1024**2
    assert window.select_model_path(quants / "tiny-llama-Q4_K_M.gguf")
    settle(qtbot, window)
    q8 = next(tab.quants.topLevelItem(i) for i in range(tab.quants.topLevelItemCount())
              if tab.quants.topLevelItem(i).text(1) == "tiny-llama-Q8_0")
    tab.quants.setCurrentItem(q8)
    assert tab.action.text() == "Select tiny-llama-Q8_0"
    tab.action.click()
    settle(qtbot, window)
    assert window.selected_model().name == "tiny-llama-Q8_0"
