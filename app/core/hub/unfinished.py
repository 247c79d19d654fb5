"""Downloads that stopped before the end (a cancel, a cut connection, a closed app): found again
later, to resume or discard.

A partial file's name holds its content's ETag, not what it is, so when a download starts a
small record beside the partial (`.NAME.modelyard.json`, hidden) says which repo, file,
revision and destination it belongs to. Finding the unfinished downloads reads those records;
a partial in the HF cache without one (left by another program) can only be discarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import BadInputError
from app.core.hub.download import DownloadRequest
from app.core.hub.references import check_repo_id

RECORD_SUFFIX = ".modelyard.json"
MAX_RECORD_BYTES = 64 << 10
FOLDER_DEPTH = 4  # a download folder's own files, and a few levels of repo subfolders


def record_path(partial: Path) -> Path:
    return partial.with_name(f".{partial.name}{RECORD_SUFFIX}")


def write_record(partial: Path, request: DownloadRequest, size: int) -> None:
    """Say what `partial` is, so the download can be found and resumed after a restart."""
    data = {"repo_id": request.repo_id, "filename": request.filename,
            "revision": request.revision, "size": size,
            "output_dir": str(request.output_dir) if request.output_dir is not None else None,
            "cache_dir": str(request.cache_dir) if request.cache_dir is not None else None}
    record = record_path(partial)
    temporary = record.with_name(record.name + ".tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, record)


def forget_record(partial: Path) -> None:
    record_path(partial).unlink(missing_ok=True)


@dataclass(frozen=True)
class UnfinishedDownload:
    partial: Path
    done_bytes: int
    modified: float  # when bytes last arrived (seconds since the epoch)
    request: DownloadRequest | None  # None: not started by Modelyard; it can only be discarded
    size: int = 0  # the whole file's size, when known

    @property
    def label(self) -> str:
        if self.request is None:
            return f"{self.partial.parent.parent.name}: unknown file"
        return f"{self.request.filename} from {self.request.repo_id}"

    def to_json(self) -> dict[str, Any]:
        return {"partial": str(self.partial), "done_bytes": self.done_bytes,
                "size": self.size, "modified": self.modified,
                "repo_id": self.request.repo_id if self.request else None,
                "filename": self.request.filename if self.request else None}


def _read_record(record: Path) -> tuple[DownloadRequest, int]:
    """The request a record describes; ValueError when it is not one of ours."""
    if record.stat().st_size > MAX_RECORD_BYTES:
        raise ValueError("record is implausibly large")
    data = json.loads(record.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("record is not an object")
    repo_id, filename, revision = data.get("repo_id"), data.get("filename"), \
        data.get("revision", "main")
    if not all(isinstance(v, str) and v for v in (repo_id, filename, revision)):
        raise ValueError("record lacks the repo, file or revision")
    check_repo_id(repo_id)
    output_dir, cache_dir = data.get("output_dir"), data.get("cache_dir")
    size = data.get("size")
    request = DownloadRequest(
        repo_id, filename, revision,
        output_dir=Path(output_dir) if isinstance(output_dir, str) else None,
        cache_dir=Path(cache_dir) if isinstance(cache_dir, str) else None)
    request._check()  # the same checks a new download gets: no path escapes
    return request, size if isinstance(size, int) and size > 0 else 0


def _describe(partial: Path) -> UnfinishedDownload | None:
    try:
        stat = partial.stat()
    except OSError:
        return None
    record = record_path(partial)
    request, size = None, 0
    if record.is_file():
        try:
            request, size = _read_record(record)
        except (OSError, ValueError, UnicodeDecodeError, BadInputError):
            request = None
    return UnfinishedDownload(partial, stat.st_size, stat.st_mtime, request, size)


def find_unfinished_downloads(cache_dir: Path | None,
                              folders: Sequence[Path] = ()) -> list[UnfinishedDownload]:
    """Partial downloads in the HF cache (`*/blobs/*.incomplete`) and in download folders
    (`FILE.<etag>.part` with Modelyard's record), newest first."""
    found: dict[Path, UnfinishedDownload] = {}
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = Path(constants.HF_HUB_CACHE)
    cache_dir = Path(cache_dir).expanduser()
    partials = list(cache_dir.glob("*/blobs/*.incomplete")) if cache_dir.is_dir() else []
    for folder in folders:
        folder = Path(folder).expanduser()
        for depth in range(FOLDER_DEPTH):
            pattern = "/".join(["*"] * depth + [f".*.part{RECORD_SUFFIX}"])
            for record in folder.glob(pattern):
                partial = record.with_name(record.name[1:-len(RECORD_SUFFIX)])
                partials.append(partial)
    for partial in partials:
        if partial not in found:
            described = _describe(partial)
            # A folder's part without a readable record is not known to be a download.
            if described is not None and (described.request is not None
                                          or partial.suffix == ".incomplete"):
                found[partial] = described
    return sorted(found.values(), key=lambda d: d.modified, reverse=True)


def discard_unfinished_download(download: UnfinishedDownload) -> int:
    """Delete a partial download and its record; the bytes freed. Only ever a partial."""
    partial = download.partial
    is_cache_partial = partial.suffix == ".incomplete" and partial.parent.name == "blobs"
    is_folder_partial = partial.suffix == ".part" and record_path(partial).is_file()
    if not (is_cache_partial or is_folder_partial) or partial.is_dir():
        raise BadInputError("is not a partial download; nothing was deleted", path=partial)
    freed = partial.stat().st_size if partial.exists() else 0
    partial.unlink(missing_ok=True)
    forget_record(partial)
    return freed
