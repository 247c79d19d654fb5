"""The Hub view against the local test Hub: search and paging, a repo's files with quant and
fit badges, downloads on their own queue into the HF cache, offline and gated messages, and
the window opening a pasted or dropped Hub URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from hub_server import HubServer, fresh_test_hub, serving_standard_repos
from PySide6.QtCore import QMimeData, QPointF, Qt
from PySide6.QtGui import QDropEvent

from app.core.estimate.verdict import Machine
from app.gui.background import Background
from app.gui.download_queue import DownloadQueue
from app.gui.hub_view import HubView
from app.gui.settings import AppSettings
from app.gui.sources import HF_CACHE

SMOL = "acme/SmolLM2-135M-Instruct-GGUF"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def served(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with serving_standard_repos(tmp_path_factory.mktemp("gui-hub"), smollm2_gguf) as server:
        yield server


@pytest.fixture()
def hub(served: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    return fresh_test_hub(monkeypatch, tmp_path, served)


@pytest.fixture()
def view(qtbot, hub: HubServer, tmp_path: Path) -> Iterator[HubView]:  # type: ignore[no-untyped-def]
    background = Background()
    downloads = DownloadQueue()
    widget = HubView(background, downloads, lambda: Machine("test", 16 << 30, ()),
                     lambda: tmp_path / "hf-cache")
    qtbot.addWidget(widget)
    widget.show()
    yield widget
    downloads.shutdown()
    background.wait()


def results(view: HubView) -> list[str]:
    return [view.results.item(r, 0).text() for r in range(view.results.rowCount())]


def file_rows(view: HubView) -> dict[str, tuple[str, ...]]:
    return {view.files.item(r, 0).text(): tuple(view.files.item(r, c).text() for c in range(5))
            for r in range(view.files.rowCount())}


def test_search_pages_and_opens_a_repo_with_fit_badges(qtbot, view: HubView) -> None:  # type: ignore[no-untyped-def]
    view.sort.setCurrentIndex(view.sort.findData("likes"))
    view.search_box.setText("")
    view.search_button.click()
    qtbot.waitUntil(lambda: view.results.rowCount() > 0, timeout=20000)
    assert results(view)[0] == "acme/tiny-quants-GGUF"
    if view.more_button.isEnabled():  # 30 per page: all fit on one
        view.more_button.click()
    view.library.setCurrentIndex(view.library.findData("gguf"))
    view.search_button.click()
    qtbot.waitUntil(lambda: results(view) == ["acme/tiny-quants-GGUF", SMOL, "acme/gated-GGUF"],
                    timeout=20000)
    assert "gated" in [view.results.item(2, 5).text()]

    view.results.selectRow(0)
    qtbot.waitUntil(lambda: view.fit is not None, timeout=30000)
    rows = file_rows(view)
    assert rows["tiny-Q4_K_M.gguf"][1:4] == ("Q4_K_M", "324.0 KiB", "llama")
    assert rows["Q8_0/tiny-Q8_0-*-of-00003.gguf"][1] == "Q8_0"
    assert rows["README.md"][4] == ""
    badges = [r[4] for name, r in rows.items() if name.endswith(".gguf")]
    assert all(b.endswith("RAM") for b in badges) and sum(b.startswith("★") for b in badges) == 1
    assert "avoids stacking two quantization errors" in view.original_note.text()
    assert view.recommended_button.isEnabled()

    view.open_repo("acme/tiny-llama")
    qtbot.waitUntil(lambda: view.fit is not None, timeout=30000)
    assert view.safetensors_fit.text().startswith("In transformers: fits in RAM only")
    assert "Converted to GGUF" in view.safetensors_fit.text()
    assert "parameters" in view.repo_title.text()


def test_download_runs_on_its_own_queue_into_the_cache(qtbot, view: HubView,  # type: ignore[no-untyped-def]
                                                       tmp_path: Path) -> None:
    view.search_box.setText(f"https://huggingface.co/{SMOL}")
    view.search_button.click()
    qtbot.waitUntil(lambda: view.fit is not None, timeout=30000)
    row = next(r for r in range(view.files.rowCount()) if view.files.item(r, 0).text() == GGUF)
    view.files.selectRow(row)
    assert view.download_button.isEnabled()
    with qtbot.waitSignal(view.downloads.job_finished, timeout=60000) as finished:
        view.download_button.click()
    job_id, result = finished.args
    assert result.status == "done", result.error
    assert result.value.path.is_relative_to(tmp_path / "hf-cache")
    assert view.downloads_panel.tree.topLevelItemCount() == 1


def test_offline_and_gated_say_so(qtbot, view: HubView, hub: HubServer,  # type: ignore[no-untyped-def]
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    view.open_repo("acme/gated-GGUF")
    qtbot.waitUntil(lambda: view.fit is not None, timeout=30000)
    assert "gated" in view.repo_title.text()
    assert "licence" in view.files.item(0, 4).toolTip()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    view.search_box.setText("smol")
    view.search_button.click()
    qtbot.waitUntil(lambda: view.status.text().startswith("Offline"), timeout=20000)
    assert "Local and cached models keep working" in view.status.text()


def test_window_opens_a_dropped_hub_url_and_lists_the_download(  # type: ignore[no-untyped-def]
        qtbot, hub: HubServer, settings: AppSettings) -> None:
    window = open_window(qtbot, settings)
    data = QMimeData()
    data.setText(f"https://huggingface.co/{SMOL}/blob/main/{GGUF}")
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, data,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert window.center.currentWidget() is window.hub_view
    qtbot.waitUntil(lambda: window.hub_view.fit is not None, timeout=30000)
    assert window.hub_view.selected_entry().files == (GGUF,)  # the URL's file is selected
    with qtbot.waitSignal(window.downloads.job_finished, timeout=60000):
        window.hub_view.download_recommended()
    settle(qtbot, window)
    qtbot.waitUntil(lambda: any(m.repo_id == SMOL for m in window.table_model.models()),
                    timeout=30000)
    window.sources.select(HF_CACHE)
    assert window.center.currentWidget() is window.table_page
    assert [m.repo_id for m in window.table_model.models() if m.source == "hf-cache"] == [SMOL]


def test_pasting_owner_repo_on_the_window_opens_it(qtbot, hub: HubServer,  # type: ignore[no-untyped-def]
                                                   settings: AppSettings) -> None:
    from PySide6.QtGui import QGuiApplication

    window = open_window(qtbot, settings)
    QGuiApplication.clipboard().setText("acme/tiny-quants-GGUF")
    qtbot.keyClick(window, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.center.currentWidget() is window.hub_view
    qtbot.waitUntil(lambda: window.hub_view.listing is not None, timeout=30000)
    assert window.hub_view.listing.repo_id == "acme/tiny-quants-GGUF"
    settle(qtbot, window)


def test_download_all_files_fills_one_snapshot(qtbot, view: HubView,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    view.open_repo("acme/tiny-quants-GGUF")
    qtbot.waitUntil(lambda: view.all_button.isEnabled(), timeout=30000)
    jobs = view.download_all()
    assert len(jobs) == 1  # one job for the whole repo
    qtbot.waitUntil(lambda: not view.downloads.active(), timeout=60000)
    record = view.downloads.jobs[jobs[0]]
    assert record.state == "done" and len(record.result.value) == 7
    assert record.done == record.total == view.listing.total_size  # type: ignore[union-attr]
    snapshots = list((tmp_path / "hf-cache").glob("models--acme--tiny-quants-GGUF/snapshots/*"))
    assert len(snapshots) == 1
    names = sorted(str(p.relative_to(snapshots[0])) for p in snapshots[0].rglob("*")
                   if p.is_file())
    assert names == sorted(f.name for f in view.listing.files)  # type: ignore[union-attr]
