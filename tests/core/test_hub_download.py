"""Hub downloads as jobs: into the HF cache or a folder, resumed after a dropped connection
and after a cancel, verified by size and checksum, refused up front when the disk is full."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import CancelHalfway, HubRepo, HubServer, fresh_test_hub, serving

from app.core.formats.scan import scan_hf_cache
from app.core.hub.download import DownloadRequest
from app.core.jobs import NullReporter, RecordingReporter, run_job
from app.core.resources import DiskInfo

REPO = "acme/SmolLM2-135M-Instruct-GGUF"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def served(smollm2_gguf: Path) -> Iterator[HubServer]:
    files = {GGUF: smollm2_gguf, "README.md": b"# SmolLM2 quants\n"}
    with serving(HubRepo(REPO, files, tags=("gguf",))) as server:
        yield server


@pytest.fixture()
def hub(served: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HubServer:
    return fresh_test_hub(monkeypatch, tmp_path, served)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_into_the_hf_cache_is_verified_and_listed(hub: HubServer,
                                                           smollm2_gguf: Path) -> None:
    reporter = RecordingReporter()
    result = run_job(DownloadRequest(REPO, GGUF, cache_dir=hub.cache), reporter)
    assert result.status == "done", result.error
    got = result.value
    assert got.path.parent.parent.name == "snapshots" and got.path.is_symlink()
    assert sha256(got.path) == sha256(smollm2_gguf)
    assert got.checksum == f"sha256:{sha256(smollm2_gguf)}" and got.resumed_from == 0
    sizes = [c for c in reporter.progress_calls if "MiB/s" in c[2] or "KiB/s" in c[2]
             or "GiB/s" in c[2] or "B/s" in c[2]]
    assert sizes and sizes[-1][0] == sizes[-1][1] == smollm2_gguf.stat().st_size
    assert "ETA" in sizes[0][2]
    models, problems = scan_hf_cache(hub.cache, NullReporter())
    assert [m.repo_id for m in models] == [REPO] and not problems
    assert models[0].architecture == "llama"
    assert not list(hub.cache.rglob("*.incomplete"))
    again = run_job(DownloadRequest(REPO, GGUF, cache_dir=hub.cache), RecordingReporter())
    assert again.value.already_present and again.value.path == got.path


def test_connection_cut_halfway_resumes_with_a_range_request(hub: HubServer,
                                                             smollm2_gguf: Path) -> None:
    half = smollm2_gguf.stat().st_size // 2
    hub.cut_after[GGUF] = half
    result = run_job(DownloadRequest(REPO, GGUF, cache_dir=hub.cache), RecordingReporter())
    assert result.status == "done", result.error
    assert sha256(result.value.path) == sha256(smollm2_gguf)
    ranges = [r for method, path, r in hub.requests if path.startswith("/cdn/") and r]
    assert ranges and int(ranges[-1].removeprefix("bytes=").split("-")[0]) >= half // 2


def test_cancel_keeps_a_partial_that_the_next_run_resumes(hub: HubServer,
                                                          smollm2_gguf: Path) -> None:
    size = smollm2_gguf.stat().st_size
    cancelled = run_job(DownloadRequest(REPO, GGUF, cache_dir=hub.cache), CancelHalfway())
    assert cancelled.status == "cancelled" and "resumes next time" in cancelled.error
    partials = list(hub.cache.rglob("*.incomplete"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size < size
    kept = partials[0].stat().st_size
    assert not list(hub.cache.rglob("snapshots/*/*.gguf"))
    # The cache stays readable while the partial waits: no model, no problem.
    assert scan_hf_cache(hub.cache, NullReporter()) == ([], [])

    hub.requests.clear()
    result = run_job(DownloadRequest(REPO, GGUF, cache_dir=hub.cache), RecordingReporter())
    assert result.status == "done", result.error
    assert result.value.resumed_from == kept
    assert [r for _, p, r in hub.requests if p.startswith("/cdn/")] == [f"bytes={kept}-"]
    assert sha256(result.value.path) == sha256(smollm2_gguf)


def test_download_to_a_folder_verifies_small_files_by_git_blob_id(hub: HubServer,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "models"
    result = run_job(DownloadRequest(REPO, "README.md", output_dir=out), RecordingReporter())
    assert result.status == "done", result.error
    assert (out / "README.md").read_bytes() == b"# SmolLM2 quants\n"
    assert result.value.checksum.startswith("git-sha1:")
    assert sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_a_corrupt_download_is_deleted_and_reported(hub: HubServer, tmp_path: Path) -> None:
    hub._sha_cache[(REPO, GGUF)] = "0" * 64  # the Hub's checksum no longer matches the bytes
    out = tmp_path / "models"
    result = run_job(DownloadRequest(REPO, GGUF, output_dir=out), RecordingReporter())
    assert result.status == "failed" and "checksum" in result.error
    assert list(out.iterdir()) == []


def test_full_disk_is_refused_before_any_byte(hub: HubServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.core.hub.download.probe_disk",
                        lambda path: DiskInfo(Path(path), 1 << 40, 10 << 20))
    out = tmp_path / "models"
    result = run_job(DownloadRequest(REPO, GGUF, output_dir=out), RecordingReporter())
    assert result.status == "failed" and "not enough free disk" in result.error
    assert not out.exists()
    assert not [p for _, p, _ in hub.requests if p.startswith("/cdn/")]


def test_missing_file_and_bad_names_are_bad_input(hub: HubServer, tmp_path: Path) -> None:
    missing = run_job(DownloadRequest(REPO, "nope.gguf", cache_dir=hub.cache),
                      RecordingReporter())
    assert missing.exit_code == 2 and "no file 'nope.gguf'" in missing.error
    escape = run_job(DownloadRequest(REPO, "../../etc/passwd", output_dir=tmp_path),
                     RecordingReporter())
    assert escape.exit_code == 2 and not (tmp_path.parent.parent / "etc").exists()
