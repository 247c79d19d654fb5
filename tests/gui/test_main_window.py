"""The window, driven headless: folders, the table, the details pane, drag and drop."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app.gui.main_window import MainWindow
from app.gui.models_table import COLUMN_INDEX
from app.gui.settings import AppSettings
from app.gui.sources import folder_key
from factories import make_split_gguf


@pytest.fixture()
def folder(tmp_path: Path, smollm2_gguf: Path, tiny_models: dict[str, Path],
           tiny_ggufs: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    (root / smollm2_gguf.name).symlink_to(smollm2_gguf)
    shutil.copytree(tiny_models["mixtral"], root / "tiny-mixtral")
    shutil.copy(tiny_ggufs["moe-split"], root / "moe-split.gguf")
    make_split_gguf(root, "sharded", n_shards=2)
    return root


@pytest.fixture()
def window(qtbot, settings: AppSettings) -> MainWindow:  # type: ignore[no-untyped-def]
    return open_window(qtbot, settings)


def wait_scans(qtbot, win: MainWindow) -> None:  # type: ignore[no-untyped-def]
    settle(qtbot, win, timeout=20000)


def test_adding_a_folder_fills_the_table(qtbot, window: MainWindow, folder: Path) -> None:
    assert window.proxy.rowCount() == 0
    window.add_folder(folder)
    wait_scans(qtbot, window)
    names = sorted(window.proxy.index(r, 0).data() for r in range(window.proxy.rowCount()))
    assert names == ["SmolLM2-135M-Instruct.Q4_1", "moe-split", "sharded", "tiny-mixtral"]
    row = next(r for r in range(window.proxy.rowCount())
               if window.proxy.index(r, 0).data() == "sharded")
    assert window.proxy.index(row, COLUMN_INDEX["Format"]).data() == "GGUF ×2"
    assert window.sources.currentItem().text(0) == "models (4)"
    job = list(window.queue.jobs.values())[-1]
    assert job.state == "done" and job.log_path is not None and job.log_path.exists()


def test_selecting_a_model_shows_its_tensors(qtbot, window: MainWindow, folder: Path,
                                             smollm2_gguf: Path) -> None:
    window.add_folder(folder)
    wait_scans(qtbot, window)
    assert window.select_model_path(folder / smollm2_gguf.name)
    details = window.details
    assert details.model is not None and details.model.n_tensors == 272
    assert details.tensors.proxy.rowCount() == 272
    details.tensors.filter.setText("Q8_0")
    assert details.tensors.proxy.rowCount() == 1
    assert details.tensors.count.text() == "1 of 272 tensors"
    details.tensors.filter.setText("blk.0.")
    assert details.tensors.proxy.rowCount() == 9
    overview = {details.overview.form.itemAt(i, details.overview.form.ItemRole.LabelRole)
                .widget().text(): details.overview.form.itemAt(
                    i, details.overview.form.ItemRole.FieldRole).widget().text()
                for i in range(details.overview.form.rowCount())}
    assert overview["Architecture:"] == "llama"
    assert overview["Layers:"] == "30"


def test_problems_tab_lists_the_relayout_hint(qtbot, window: MainWindow, folder: Path) -> None:
    window.add_folder(folder)
    wait_scans(qtbot, window)
    assert window.select_model_path(folder / "moe-split.gguf")
    problems = window.details.problems.list
    texts = [problems.item(i).text() for i in range(problems.count())]
    layout = next(t for t in texts if "relayout" in t)
    assert "→ Fix expert layout…" in layout  # the window's own remedy, no command line
    assert "--experts" not in layout and "modelyard" not in layout
    pane = window.details
    assert pane.tabText(pane.indexOf(pane.problems)).startswith("Problems (")


def test_search_and_source_filter(qtbot, window: MainWindow, folder: Path,
                                  tmp_path: Path, tiny_ggufs: dict[str, Path]) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny_ggufs["dense"], other / "dense.gguf")
    window.add_folder(folder)
    window.add_folder(other)
    wait_scans(qtbot, window)
    window.sources.select("all")
    assert window.proxy.rowCount() == 5
    window.search.setText("mixtral")
    assert window.proxy.rowCount() == 1
    window.search.setText("")
    window.sources.select(folder_key(other.absolute()))
    assert window.proxy.rowCount() == 1
    window.sources.select("all")
    window.search.setText("gguf llama")
    assert window.proxy.rowCount() == 4


def test_sorting_uses_real_values(qtbot, window: MainWindow, folder: Path) -> None:
    window.add_folder(folder)
    wait_scans(qtbot, window)
    window.table.sortByColumn(COLUMN_INDEX["Size"], Qt.SortOrder.DescendingOrder)
    assert window.proxy.index(0, 0).data() == "SmolLM2-135M-Instruct.Q4_1"
    window.table.sortByColumn(COLUMN_INDEX["Params"], Qt.SortOrder.AscendingOrder)
    assert window.proxy.index(window.proxy.rowCount() - 1, 0).data() == \
        "SmolLM2-135M-Instruct.Q4_1"


def test_folders_are_remembered(qtbot, settings: AppSettings, folder: Path) -> None:
    first = MainWindow(settings)
    qtbot.addWidget(first)
    first.add_folder(folder)
    wait_scans(qtbot, first)
    first.close()
    second = MainWindow(AppSettings(Path(settings.file_name())))
    qtbot.addWidget(second)
    wait_scans(qtbot, second)
    assert second.proxy.rowCount() == 4
    second.remove_source(folder_key(folder))
    assert second.proxy.rowCount() == 0 and second.settings.folders() == []


def test_dropping_a_folder_adds_it(qtbot, window: MainWindow, folder: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    wait_scans(qtbot, window)
    assert window.settings.folders() == [folder]
    assert window.proxy.rowCount() == 4


def test_status_bar_shows_live_resources(qtbot, window: MainWindow, folder: Path) -> None:
    window.add_folder(folder)
    wait_scans(qtbot, window)
    def shows_folder() -> bool:  # the selected source's disk, probed off the UI thread
        res = window.status.resources
        return res is not None and res.disk is not None and res.disk.path == folder

    qtbot.waitUntil(shows_folder, timeout=10000)
    assert window.status.ram_label.text().startswith("RAM ")
    assert "models: " in window.status.disk_label.text()
    assert window.status.disk_label.text().endswith(" free")


def test_window_starts_and_runs_a_job_without_importing_torch(
        tmp_path: Path, tiny_llama_ggufs: dict[str, Path]) -> None:
    # The conversion runs in a child process: torch is imported there, never in the window.
    code = f"""
import sys, time
start = time.monotonic()
from app.gui.application import create_application
from app.gui.settings import AppSettings
from pathlib import Path
app = create_application()
from app.gui.main_window import MainWindow
window = MainWindow(AppSettings(Path({str(tmp_path / 's.ini')!r})))
window.show()
app.processEvents()
seconds = round(time.monotonic() - start, 2)
from app.core.convert import ConvertRequest
job = window.queue.submit(ConvertRequest(Path({str(tiny_llama_ggufs["F32"])!r}),
                                         Path({str(tmp_path / "out.gguf")!r}), "Q8_0"))
deadline = time.monotonic() + 100
while not window.queue.jobs[job].finished and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
assert window.queue.jobs[job].state == "done", window.queue.jobs[job].text
import gc
print(seconds, 'torch' in sys.modules, 'transformers' in sys.modules, gc.isenabled())
window.close()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**__import__("os").environ,
                                              "QT_QPA_PLATFORM": "offscreen",
                                              "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    seconds, torch_loaded, transformers_loaded, automatic_gc = result.stdout.split()
    assert (torch_loaded, transformers_loaded) == ("False", "False")
    assert automatic_gc == "False"  # the GUI thread collects garbage (app/gui/gc_guard.py)
    print(f"window on screen after {seconds} s")
