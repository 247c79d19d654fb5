"""Unfinished downloads found again after a restart: what they are, resumed to the same
verified file, or discarded without touching anything else."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import CancelHalfway, HubRepo, HubServer, fresh_test_hub, serving

from app.core.errors import BadInputError
from app.core.hub.download import DownloadRequest
from app.core.hub.unfinished import (
    discard_unfinished_download,
    find_unfinished_downloads,
    record_path,
)
from app.core.jobs import RecordingReporter, run_job

REPO = "acme/SmolLM2-135M-Instruct-GGUF"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def served(smollm2_gguf: Path) -> Iterator[HubServer]:
    with serving(HubRepo(REPO, {GGUF: smollm2_gguf}, tags=("gguf",))) as server:
        yield server


@pytest.fixture()
def hub(served: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    return fresh_test_hub(monkeypatch, tmp_path, served)


def test_a_cancelled_cache_download_is_found_and_resumed(hub: HubServer,
                                                         smollm2_gguf: Path) -> None:
    request = DownloadRequest(REPO, GGUF, cache_dir=hub.cache)
    assert run_job(request, CancelHalfway()).status == "cancelled"
    [found] = find_unfinished_downloads(hub.cache)
    assert found.request == request and found.size == smollm2_gguf.stat().st_size
    assert 0 < found.done_bytes == found.partial.stat().st_size < found.size
    assert found.label == f"{GGUF} from {REPO}"
    resumed = run_job(found.request, RecordingReporter())
    assert resumed.status == "done", resumed.error
    assert resumed.value.resumed_from == found.done_bytes
    assert hashlib.sha256(resumed.value.path.read_bytes()).digest() == \
        hashlib.sha256(smollm2_gguf.read_bytes()).digest()
    assert find_unfinished_downloads(hub.cache) == []
    assert not record_path(found.partial).exists()


def test_a_folder_download_is_found_and_discarded(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "downloads"
    out.mkdir()
    (out / "keep.gguf").write_bytes(b"GGUF")
    assert run_job(DownloadRequest(REPO, GGUF, output_dir=out), CancelHalfway()).status == \
        "cancelled"
    [found] = find_unfinished_downloads(tmp_path / "no-cache", [out])
    assert found.request == DownloadRequest(REPO, GGUF, output_dir=out)
    assert discard_unfinished_download(found) == found.done_bytes
    assert sorted(p.name for p in out.iterdir()) == ["keep.gguf"]
    assert find_unfinished_downloads(tmp_path / "no-cache", [out]) == []


def test_foreign_and_hostile_partials(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    blobs = cache / "models--acme--x" / "blobs"
    blobs.mkdir(parents=True)
    foreign = blobs / ("a" * 64 + ".incomplete")  # huggingface_hub's own, no record
    foreign.write_bytes(b"\0" * 10)
    hostile = blobs / ("b" * 64 + ".incomplete")
    hostile.write_bytes(b"\0" * 5)
    record_path(hostile).write_text(json.dumps({"repo_id": REPO, "filename": "../../x"}))
    folder = tmp_path / "folder"
    folder.mkdir()
    lone = folder / "model.gguf.0123456789abcdef.part"  # a part with no record: not ours
    lone.write_bytes(b"\0")
    found = {d.partial: d for d in find_unfinished_downloads(cache, [folder])}
    assert set(found) == {foreign, hostile}
    assert found[foreign].request is None and found[hostile].request is None
    assert found[foreign].label == "models--acme--x: unknown file"
    discard_unfinished_download(found[hostile])
    assert not hostile.exists() and not record_path(hostile).exists() and foreign.exists()
    with pytest.raises(BadInputError):
        discard_unfinished_download(type(found[foreign])(lone, 1, 0.0, None))
    assert lone.exists()
