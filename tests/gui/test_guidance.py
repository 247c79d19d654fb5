"""The window guides instead of misleading: names readable at 1024 wide, the table judged by
this machine, no stale or empty panes without a word, a first launch that says what to do,
the same units and shapes as the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtCore import Qt

from app.core.estimate.breakdown import MemoryBreakdown
from app.gui.fit_tab import NeedBar
from app.gui.main_window import MainWindow
from app.gui.models_table import COLUMN_INDEX
from app.gui.settings import AppSettings
from factories import make_gguf


@pytest.fixture()
def folder(tmp_path: Path, smollm2_gguf: Path, tiny_models: dict[str, Path]) -> Path:
    """Two files of one model whose names differ only at the end, and a small HF model."""
    root = tmp_path / "models"
    root.mkdir()
    (root / smollm2_gguf.name).symlink_to(smollm2_gguf)
    make_gguf(root / "SmolLM2-135M-Instruct.Q4_1-requantized-Q8_0.gguf")
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    return root


def fit_texts(window: MainWindow) -> set[str]:
    column = COLUMN_INDEX["Fit"]
    return {window.proxy.index(r, column).data() for r in range(window.proxy.rowCount())}


def test_names_and_fit_fit_a_1024_wide_window(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                              folder: Path) -> None:
    window = open_window(qtbot, settings, folder)
    window.resize(1024, 640)
    settle(qtbot, window)
    qtbot.wait(50)
    table = window.table
    assert table.textElideMode() == Qt.TextElideMode.ElideMiddle
    visible = [c for c in range(window.proxy.columnCount()) if not table.isColumnHidden(c)]
    for title in ("Name", "Quant", "Size", "Fit"):
        assert COLUMN_INDEX[title] in visible
    used = sum(table.columnWidth(c) for c in visible)
    assert used <= table.viewport().width()  # nothing scrolls away sideways
    assert not table.horizontalScrollBar().isVisible()
    # every shown column holds its contents; the names, elided in the middle, stay distinct
    for column in visible[1:]:
        assert table.columnWidth(column) >= table.sizeHintForColumn(column)
    metrics = table.fontMetrics()
    width = table.columnWidth(0) - 12
    shown = {metrics.elidedText(window.proxy.index(r, 0).data(), Qt.TextElideMode.ElideMiddle,
                                width) for r in range(window.proxy.rowCount())}
    assert len(shown) == window.proxy.rowCount()
    # a filter change keeps Size readable
    window.search.setText("smol")
    qtbot.wait(50)
    size = COLUMN_INDEX["Size"]
    assert table.columnWidth(size) >= table.sizeHintForColumn(size)


def test_a_what_if_target_stays_on_the_fit_tab(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                               folder: Path) -> None:
    window = open_window(qtbot, settings, folder)
    header = window.table_model.headerData(COLUMN_INDEX["Fit"], Qt.Orientation.Horizontal)
    assert header == "Fit here"
    before = fit_texts(window)
    assert "GPU" not in before  # no GPU on these machines
    assert window.select_model_path(folder / "tiny-llama")
    tab = window.details.fit
    window.details.setCurrentWidget(tab)
    tab.target_box.setCurrentIndex(tab.target_box.findData("custom"))
    tab.vram.setValue(24)
    tab.ram.setValue(64)
    settle(qtbot, window)
    assert "fits on GPU" in tab.verdict.text()  # the tab answers the question asked
    assert fit_texts(window) == before  # the table still says what runs here
    assert tab.judge_table.isVisible() and not tab.judge_table.isChecked()
    tab.judge_table.setChecked(True)  # unless the user says otherwise
    settle(qtbot, window)
    assert fit_texts(window) == {"GPU"}
    assert window.table_model.headerData(COLUMN_INDEX["Fit"],
                                         Qt.Orientation.Horizontal) == "Fit · 24 GiB GPU"
    window.close()
    again = open_window(qtbot, settings)
    assert again.details.fit.target_spec().kind == "machine"  # not carried into a restart


def test_no_model_no_numbers(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                             tmp_path: Path) -> None:
    truncated = folder / "truncated.gguf"
    data = (folder / "SmolLM2-135M-Instruct.Q4_1-requantized-Q8_0.gguf").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    window = open_window(qtbot, settings, folder)
    tab = window.details.fit
    window.details.setCurrentWidget(tab)
    assert window.select_model_path(folder / "tiny-llama")
    settle(qtbot, window)
    assert tab.quants.topLevelItemCount() > 0 and tab.ram_text.text()
    window.table.clearSelection()
    settle(qtbot, window)
    assert tab.verdict.text() == "Select a model to see where it fits."
    assert tab.quants.topLevelItemCount() == 0 and not tab.longest.text()
    assert not tab.ram_bar.isVisible() and not tab.notes.text()
    assert window.select_model_path(truncated)
    settle(qtbot, window)
    assert "0 B" not in tab.ram_text.text() or not tab.ram_text.isVisible()
    assert not tab.ram_bar.isVisible() and "unknown" in tab.verdict.text()
    assert window.select_model_path(folder / "tiny-llama")
    settle(qtbot, window)
    assert not tab.vram_bar.isVisible()  # no GPU on this target: no empty VRAM bar
    assert tab.ram_bar.isVisible()
    assert window.select_model_path(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")
    settle(qtbot, window)
    first = tab.quants.topLevelItem(0)
    assert first.text(0) == "★" and first.text(1) == "Q4_1 (keep this file)"
    assert "stacks a second quantization error" in tab.quants_title.text()
    assert tab.action.text() == "Test this file"


def test_a_small_need_is_drawn_large_enough_to_see(qtbot) -> None:  # type: ignore[no-untyped-def]
    bar = NeedBar()
    qtbot.addWidget(bar)
    bar.resize(400, 20)
    mib = 1024**2
    bar.set_values(MemoryBreakdown(weights=94 * mib, kv_cache=90 * mib, compute=100 * mib,
                                   overhead=30 * mib), 20 * 1024 * mib)
    assert bar.zoomed
    assert min(bar.segment_widths()) >= 10  # every part can be seen
    bar.set_values(MemoryBreakdown(weights=18 * 1024 * mib), 20 * 1024 * mib)
    assert not bar.zoomed


def test_first_launch_says_what_to_do(qtbot, settings: AppSettings) -> None:  # type: ignore[no-untyped-def]
    window = open_window(qtbot, settings)
    empty = window.table.empty
    assert empty.isVisible() and "Open a folder" in empty.label.text()
    assert empty.button.isVisible()
    assert not window.jobs_dock.isVisible()  # no job yet: no jobs dock
    window.search.setText("nothing")
    assert empty.isVisible()


def test_an_empty_filter_says_why(qtbot, settings: AppSettings, folder: Path) -> None:  # type: ignore[no-untyped-def]
    window = open_window(qtbot, settings, folder)
    assert not window.table.empty.isVisible()
    assert not window.jobs_dock.isVisible()  # a scan is not a job the user waits for
    window.search.setText("no-such-model")
    assert window.table.empty.isVisible()
    assert "no-such-model" in window.table.empty.label.text()


def test_status_bar_units_are_gib(qtbot, settings: AppSettings) -> None:  # type: ignore[no-untyped-def]
    window = open_window(qtbot, settings)
    qtbot.waitUntil(lambda: window.status.resources is not None, timeout=10000)
    assert window.status.ram_label.text().endswith(" GiB")


def test_tensor_shapes_read_as_the_cli_prints_them(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                   folder: Path) -> None:
    window = open_window(qtbot, settings, folder)
    path = folder / "SmolLM2-135M-Instruct.Q4_1-requantized-Q8_0.gguf"
    assert window.select_model_path(path)
    tensors = window.details.tensors
    tensors.filter.setText("blk.0.ffn_up.weight")
    gui_shape = tensors.proxy.index(0, 2).data()
    done = subprocess.run([sys.executable, "-m", "app", "inspect", str(path), "--tensors"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "blk.0.ffn_up.weight" in x)
    assert gui_shape in line.split()
