"""Deleting a leftover `.part`: only ever a leftover, and all of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.core.errors import BadInputError
from app.core.formats.scan import delete_incomplete_output, scan_paths
from factories import make_gguf


def test_scan_says_how_big_and_how_old(tmp_path: Path) -> None:
    part = tmp_path / "half.gguf.part"
    part.write_bytes(b"\0" * 300)
    os.utime(part, (1_700_000_000, 1_700_000_000))
    folder = tmp_path / "hf-out.part"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(b"\0" * 10)
    (folder / "sub" / "b.json").write_bytes(b"\0" * 5)
    os.utime(folder / "a.safetensors", (1_700_000_100, 1_700_000_100))
    os.utime(folder / "sub" / "b.json", (1_700_000_050, 1_700_000_050))
    found = {i.path.name: i for i in scan_paths([tmp_path]).incomplete}
    assert (found["half.gguf.part"].size_bytes, found["half.gguf.part"].modified) == (
        300, 1_700_000_000)
    assert (found["hf-out.part"].size_bytes, found["hf-out.part"].modified) == (
        15, 1_700_000_100)


def test_delete_removes_the_part_and_nothing_else(tmp_path: Path) -> None:
    model = make_gguf(tmp_path / "model.gguf")
    part = tmp_path / "model-Q8_0.gguf.part"
    part.write_bytes(b"\0" * 123)
    folder = tmp_path / "out.part"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 7)
    assert delete_incomplete_output(part) == 123
    assert delete_incomplete_output(folder) == 7
    assert not part.exists() and not folder.exists() and model.exists()
    assert scan_paths([tmp_path]).incomplete == ()


@pytest.mark.parametrize("name", ["model.gguf", "notes.part", "missing.gguf.part"])
def test_delete_refuses_what_is_not_a_leftover(tmp_path: Path, name: str) -> None:
    make_gguf(tmp_path / "model.gguf")
    (tmp_path / "notes.part").write_text("a user's file that happens to end in .part")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BadInputError) as error:
        delete_incomplete_output(tmp_path / name)
    assert name in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_linked_part_loses_only_the_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.safetensors").write_bytes(b"\0" * 9)
    link = tmp_path / "out.part"
    link.symlink_to(target, target_is_directory=True)
    delete_incomplete_output(link)
    assert not os.path.lexists(link) and (target / "keep.safetensors").exists()
