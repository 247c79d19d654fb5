"""Unfinished downloads in the window: listed at start, resumed on the download queue to the
verified file, or discarded after a yes; no buttons while a download may be writing one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from gui_helpers import open_window
from hub_server import CancelHalfway, HubRepo, HubServer, serving, use_test_hub

from app.core.hub.download import DownloadRequest
from app.core.hub.unfinished import record_path
from app.core.jobs import run_job
from app.gui.settings import AppSettings

REPO = "acme/SmolLM2-135M-Instruct-GGUF"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def served(smollm2_gguf: Path) -> Iterator[HubServer]:
    with serving(HubRepo(REPO, {GGUF: smollm2_gguf, "README.md": b"# readme\n"})) as server:
        yield server


@pytest.fixture()
def cache(served: HubServer, monkeypatch: pytest.MonkeyPatch, settings: AppSettings,
          tmp_path: Path) -> Path:
    cache = use_test_hub(monkeypatch, tmp_path, served)
    settings.set_hf_cache_dir(cache)
    request = DownloadRequest(REPO, GGUF, cache_dir=cache)
    assert run_job(request, CancelHalfway()).status == "cancelled"
    return cache


def test_resume_finishes_the_download(qtbot, settings: AppSettings, cache: Path,  # type: ignore[no-untyped-def]
                                      smollm2_gguf: Path) -> None:
    window = open_window(qtbot, settings)
    banner = window.unfinished
    qtbot.waitUntil(lambda: len(banner.rows) == 1, timeout=10000)
    assert banner.isVisible() and "1 unfinished download(s)" in banner.title.text()
    [row] = banner.rows.values()
    text = row.label.text().replace("\u200b", "")  # break opportunities in long names
    assert GGUF in text and REPO in text and " of 93.8 MiB" in text
    row.resume_button.click()
    assert not row.resume_button.isEnabled()  # the download queue has it now
    qtbot.waitUntil(lambda: not window.downloads.active(), timeout=60000)
    qtbot.waitUntil(lambda: not banner.rows, timeout=10000)
    assert not banner.isVisible()
    [done] = list(cache.glob("*/snapshots/*/" + GGUF))
    assert hashlib.sha256(done.read_bytes()).digest() == \
        hashlib.sha256(smollm2_gguf.read_bytes()).digest()
    assert not list(cache.rglob("*.incomplete")) and not list(cache.rglob(".*.json"))


def test_discard_asks_and_deletes_only_the_partial(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                   cache: Path) -> None:
    window = open_window(qtbot, settings)
    banner = window.unfinished
    qtbot.waitUntil(lambda: len(banner.rows) == 1, timeout=10000)
    [row] = banner.rows.values()
    partial = row.download.partial
    banner.confirm = lambda download: False
    row.discard_button.click()
    qtbot.wait(100)
    assert partial.exists()
    banner.confirm = lambda download: True
    row.discard_button.click()
    qtbot.waitUntil(lambda: not banner.rows, timeout=10000)
    assert not partial.exists() and not record_path(partial).exists()
    assert partial.parent.is_dir()  # the cache folder itself is left alone


def test_no_buttons_while_that_file_is_downloading(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                   cache: Path) -> None:
    window = open_window(qtbot, settings)
    banner = window.unfinished
    qtbot.waitUntil(lambda: len(banner.rows) == 1, timeout=10000)
    [row] = banner.rows.values()
    other = DownloadRequest(REPO, "README.md", cache_dir=cache)
    same = DownloadRequest(REPO, GGUF, cache_dir=cache)
    assert not banner.is_busy(row.download)
    window.downloads.submit(other)
    assert not banner.is_busy(row.download)
    qtbot.waitUntil(lambda: not window.downloads.active(), timeout=30000)
    qtbot.waitUntil(lambda: not window.background.busy(), timeout=10000)  # the look after it
    window.downloads.submit(same)
    [row] = banner.rows.values()
    assert banner.is_busy(row.download)
    assert not row.discard_button.isEnabled() and not row.resume_button.isEnabled()
    qtbot.waitUntil(lambda: not window.downloads.active(), timeout=60000)
