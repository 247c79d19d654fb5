"""Scanning folders and the HF cache: every model found, every bad path a problem, no hang."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.core.errors import BadInputError
from app.core.formats.scan import ScanRequest, inspect_path, scan_paths
from app.core.jobs import RecordingReporter, run_job
from factories import make_hf_cache, make_split_gguf


@pytest.fixture()
def library(tmp_path: Path, tiny_models: dict[str, Path], tiny_ggufs: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    (root / "hf").mkdir(parents=True)
    for name in ("llama", "mixtral", "llama-bnb4"):
        shutil.copytree(tiny_models[name], root / "hf" / name)
    (root / "gguf" / "deep" / "er").mkdir(parents=True)
    shutil.copy(tiny_ggufs["dense"], root / "gguf" / "dense.gguf")
    shutil.copy(tiny_ggufs["moe-split"], root / "gguf" / "deep" / "er" / "moe.gguf")
    make_split_gguf(root / "gguf", "sharded", n_shards=2)
    (root / "gguf" / "bad.gguf").write_bytes(b"not a gguf at all")
    (root / "notes.txt").write_text("not a model")
    return root


def test_scan_finds_every_model_and_keeps_going(library: Path) -> None:
    result = scan_paths([library])
    names = sorted(m.name for m in result.models)
    assert names == ["bad", "dense", "llama", "llama-bnb4", "mixtral", "moe", "sharded"]
    bad = next(m for m in result.models if m.name == "bad")
    assert "not a GGUF file" in bad.fatal_problems[0].text
    assert result.problems == ()


def test_scan_request_reports_progress_and_can_be_cancelled(library: Path) -> None:
    reporter = RecordingReporter()
    result = run_job(ScanRequest((library,)), reporter)
    assert result.status == "done" and len(result.value.models) == 7
    assert reporter.progress_calls and reporter.progress_calls[0][1] == 0  # indeterminate
    cancelled = RecordingReporter()
    cancelled.token.cancel()
    assert run_job(ScanRequest((library,)), cancelled).status == "cancelled"


def test_symlink_loops_do_not_hang(tmp_path: Path, tiny_ggufs: dict[str, Path]) -> None:
    root = tmp_path / "loops"
    (root / "a").mkdir(parents=True)
    shutil.copy(tiny_ggufs["dense"], root / "a" / "m.gguf")
    (root / "a" / "back").symlink_to(root)  # a folder link that loops to the top
    (root / "self.gguf").symlink_to(root / "self.gguf")  # a file link that loops to itself
    (root / "gone.gguf").symlink_to(root / "missing.gguf")
    result = scan_paths([root])
    assert [m.name for m in result.models] == ["m"]
    texts = {p.path.name: p.text for p in result.problems}
    assert texts["self.gguf"] == "symbolic link loop"
    assert "broken symbolic link" in texts["gone.gguf"]


def test_unreadable_folder_is_a_problem(tmp_path: Path, tiny_ggufs: dict[str, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "perm"
    (root / "locked").mkdir(parents=True)
    (root / "open").mkdir()
    shutil.copy(tiny_ggufs["dense"], root / "open" / "ok.gguf")
    shutil.copy(tiny_ggufs["dense"], root / "locked" / "hidden.gguf")
    os.chmod(root / "locked", 0)
    if os.geteuid() == 0:
        # root reads any folder; make scandir fail as the kernel does for everyone else.
        real_scandir = os.scandir

        def scandir(path: str | os.PathLike[str]) -> object:
            if Path(path) == root / "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        result = scan_paths([root])
    finally:
        os.chmod(root / "locked", 0o755)
    assert [m.name for m in result.models] == ["ok"]
    assert [(p.path, p.text) for p in result.problems] == [
        (root / "locked", "cannot read folder: permission denied")]


def test_missing_and_non_model_paths(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("hi")
    result = scan_paths([tmp_path / "nope", tmp_path / "readme.md"])
    assert result.models == ()
    assert [p.text for p in result.problems] == ["does not exist",
                                                 "not a model file (GGUF) or folder"]
    with pytest.raises(BadInputError, match="no such file"):
        inspect_path(tmp_path / "nope")
    with pytest.raises(BadInputError, match="not a model"):
        inspect_path(tmp_path)


def test_hf_cache_models_are_listed_by_repo(tmp_path: Path, tiny_models: dict[str, Path],
                                            tiny_ggufs: dict[str, Path]) -> None:
    cache = tmp_path / "hub"
    make_hf_cache(cache, "tiny-org/tiny-llama",
                  {p.name: p.read_bytes() for p in tiny_models["llama"].iterdir() if p.is_file()})
    make_hf_cache(cache, "tiny-org/tiny-gguf",
                  {"dense-F32.gguf": tiny_ggufs["dense"].read_bytes(), "README.md": b"# hi"})
    result = scan_paths([], include_hf_cache=True, hf_cache_dir=cache)
    by_name = {m.name: m for m in result.models}
    assert set(by_name) == {"tiny-org/tiny-gguf · dense-F32", "tiny-org/tiny-llama"}
    llama = by_name["tiny-org/tiny-llama"]
    assert (llama.source, llama.repo_id, llama.architecture) == ("hf-cache", "tiny-org/tiny-llama",
                                                                 "llama")
    assert llama.problems == ()
    # A cache that does not exist yet is simply empty.
    assert scan_paths([], include_hf_cache=True, hf_cache_dir=tmp_path / "none").models == ()
