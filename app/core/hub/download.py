"""Download one file from the Hub as a job: resumable, disk-checked and verified.

huggingface_hub 2.x resumes within one call (it retries a dropped connection from where it
was) but deletes its partial file when the call fails, so a cancelled download or a closed app
would start over. Modelyard keeps its own partial file, named after the content's ETag so it
is never mixed with another version, and lets huggingface_hub do the rest:

- into the HF cache, the partial is `blobs/<etag>.incomplete` (the name huggingface_hub's cache
  scanner reports as an unfinished download); the finished blob is then linked into the
  snapshot by `hf_hub_download` itself, which finds the blob and only adds the link and ref;
- into a folder, the partial is `FILE.<etag>.part` beside the final `FILE`.

The bytes come through huggingface_hub's `http_get` (its Range resume and retries), progress
through a tqdm class that forwards to the reporter. At the end the size and the checksum (the
LFS sha256, or the git blob id for small files) are verified before the file is put in place.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.core.errors import InsufficientResourcesError, JobCancelled, JobError, OptionError
from app.core.formats.model_info import format_bytes
from app.core.hub.client import ensure_online, hub_endpoint
from app.core.hub.errors import HubUnavailableError, hub_errors
from app.core.hub.references import check_repo_id
from app.core.jobs import LogLevel, ProgressUnit, Reporter, check_cancel
from app.core.resources import probe_disk

# Kept free beyond the file: other programs write too, and a full disk breaks more than us.
DISK_MARGIN_BYTES = 512 << 20
DISK_MARGIN_FRACTION = 0.02
HASH_CHUNK = 8 << 20
SHA256 = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESUME_NOTE = "the partial download is kept and resumes next time"


@dataclass(frozen=True)
class DownloadResult:
    repo_id: str
    filename: str
    path: Path  # the file to open (the snapshot link in the HF cache, or the folder's file)
    size: int
    checksum: str  # "sha256:<hex>" or "git-sha1:<hex>"
    resumed_from: int = 0  # bytes that were already there from an earlier attempt
    already_present: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "filename": self.filename, "path": str(self.path),
                "size": self.size, "checksum": self.checksum, "resumed_from": self.resumed_from,
                "already_present": self.already_present}


def disk_needed(size: int, already: int) -> int:
    return max(size - already, 0) + DISK_MARGIN_BYTES + int(size * DISK_MARGIN_FRACTION)


def reporter_tqdm(reporter: Reporter, label: str) -> type:
    """A tqdm class whose updates go to `reporter` (bytes, speed, ETA) and that stops the
    transfer when the job is cancelled (huggingface_hub does not catch the error)."""
    from tqdm.auto import tqdm

    class ReporterTqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()  # the reporter shows progress, not a terminal bar
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)
            self._started = time.monotonic()
            self._first = self.n

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            total = self.total or 0
            elapsed = max(time.monotonic() - self._started, 1e-6)
            rate = (self.n - self._first) / elapsed
            eta = (total - self.n) / rate if rate > 0 and total else 0
            reporter.progress(self.n, total, f"{label}: {format_bytes(self.n)} of "
                                             f"{format_bytes(total)}, {format_bytes(rate)}/s, "
                                             f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
            if reporter.cancelled():
                raise JobCancelled(f"download cancelled; {RESUME_NOTE}")
            return shown

    return ReporterTqdm


def _checksum(path: Path, etag: str, size: int, reporter: Reporter, label: str) -> str:
    """Hash the file and compare with the ETag; the sha256 of an LFS file, or the git blob
    id (sha1 of "blob SIZE\\0" + content) of a small one. Returns the checksum it verified."""
    if SHA256.match(etag):
        digest, kind = hashlib.sha256(), "sha256"
    elif GIT_SHA1.match(etag):
        digest, kind = hashlib.sha1(b"blob %d\0" % size), "git-sha1"
    else:
        reporter.log("warning", f"{label}: the Hub gave no checksum (ETag {etag!r}); only the "
                                "size was verified")
        return "size-only"
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            check_cancel(reporter)
            digest.update(chunk)
            done += len(chunk)
            reporter.progress(done, size, f"verifying {label}")
    if digest.hexdigest() != etag:
        path.unlink(missing_ok=True)
        raise JobError(f"{label}: the downloaded bytes do not match the Hub's {kind} "
                       f"checksum ({digest.hexdigest()[:12]}… instead of {etag[:12]}…); the "
                       "corrupt download was deleted", hint="download it again")
    return f"{kind}:{etag}"


@dataclass(frozen=True)
class DownloadRequest:
    """Job: download `filename` of `repo_id` into the HF cache, or into `output_dir`."""

    repo_id: str
    filename: str
    revision: str = "main"
    output_dir: Path | None = None
    cache_dir: Path | None = None  # the HF cache; default huggingface_hub's
    progress_unit: ProgressUnit = "bytes"

    @property
    def title(self) -> str:
        return f"Download {self.filename} from {self.repo_id}"

    def _check(self) -> None:
        check_repo_id(self.repo_id)
        parts = self.filename.split("/")
        if not self.filename or self.filename.startswith("/") or "" in parts or ".." in parts \
                or "\\" in self.filename:
            raise OptionError(f"{self.filename!r} is not a file name inside a repo")
        if self.output_dir is not None and self.output_dir.exists() \
                and not self.output_dir.is_dir():
            raise OptionError("the output is not a folder", path=self.output_dir)

    def run(self, reporter: Reporter) -> DownloadResult:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        self._check()
        ensure_online()
        endpoint = hub_endpoint()
        label = self.filename.rsplit("/", 1)[-1]
        url = hf_hub_url(self.repo_id, self.filename, revision=self.revision,
                         endpoint=endpoint)
        with hub_errors(self.repo_id, self.filename, self.revision, endpoint):
            meta = get_hf_file_metadata(url, endpoint=endpoint)
        if not meta.etag or not meta.commit_hash or meta.size is None:
            raise JobError(f"the Hub's answer for {self.filename} lacks its ETag, commit or "
                           f"size; {endpoint} may not be a Hugging Face Hub")
        etag, size = meta.etag, meta.size
        for value in (etag, meta.commit_hash):
            # Both become file names in the cache: a hostile server must not steer a path.
            if not SAFE_NAME.match(value):
                raise JobError(f"the Hub's answer for {self.filename} names the version "
                               f"{value[:80]!r}, which is not a safe file name")
        final, partial, cached = self._places(etag, meta.commit_hash)
        if final.exists():
            if final.stat().st_size == size:
                reporter.log("info", f"{label} is already downloaded: {final}")
                checksum = _checksum(final, etag, size, reporter, label) if cached is None \
                    else f"cached:{etag}"
                path = final if cached is None else self._link_into_cache(cached)
                return DownloadResult(self.repo_id, self.filename, path, size, checksum,
                                      already_present=True)
            if cached is not None:
                raise JobError(f"the HF cache holds {final} with the wrong size",
                               hint="delete it from the cache and download again")
        already = partial.stat().st_size if partial.exists() else 0
        if already > size:
            partial.unlink()
            already = 0
        free = probe_disk(partial.parent).free_bytes
        needed = disk_needed(size, already)
        if needed > free:
            raise InsufficientResourcesError(
                f"not enough free disk for {label}: it needs {format_bytes(needed)} "
                f"({format_bytes(size - already)} to download plus a margin), "
                f"{format_bytes(free)} is free", needed_bytes=needed, available_bytes=free,
                path=partial.parent, hint="free some space or download to another folder")
        partial.parent.mkdir(parents=True, exist_ok=True)
        if cached is not None:
            # A cache repo folder without snapshots/ reads as corrupt to huggingface_hub's
            # scanner while a partial download waits in blobs/.
            (partial.parent.parent / "snapshots").mkdir(exist_ok=True)
        if already:
            reporter.log("info", f"resuming {label} from {format_bytes(already)} of "
                                 f"{format_bytes(size)}")
        from app.core.hub.unfinished import forget_record, write_record

        write_record(partial, self, size)  # found again after a restart, to resume
        try:
            self._transfer(meta.location or url, url, partial, already, size, reporter, label)
            checksum = _checksum(partial, etag, size, reporter, label)
            os.replace(partial, final)
        finally:
            if not partial.exists():  # finished, or deleted as corrupt: nothing to resume
                forget_record(partial)
        path = final if cached is None else self._link_into_cache(cached)
        reporter.log("info", f"downloaded {label} ({format_bytes(size)}, {checksum[:18]}…) "
                             f"to {path}")
        return DownloadResult(self.repo_id, self.filename, path, size, checksum, already)

    def _places(self, etag: str, commit: str) -> tuple[Path, Path, Path | None]:
        """(final file, partial file, HF cache folder or None) for this download."""
        if self.output_dir is not None:
            final = self.output_dir / self.filename
            return final, final.with_name(f"{final.name}.{etag[:16]}.part"), None
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        cache = Path(self.cache_dir or constants.HF_HUB_CACHE).expanduser()
        storage = cache / repo_folder_name(repo_id=self.repo_id, repo_type="model")
        blobs = storage / "blobs"
        pointer = storage / "snapshots" / commit / self.filename
        blob = blobs / etag
        if pointer.exists():
            return pointer, blobs / f"{etag}.incomplete", cache
        return blob, blobs / f"{etag}.incomplete", cache

    def _transfer(self, location: str, url: str, partial: Path, already: int, size: int,
                  reporter: Reporter, label: str) -> None:
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers()
        if urlsplit(location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # the token is for the Hub, not its CDN
        try:
            with hub_errors(self.repo_id, self.filename, self.revision, hub_endpoint()), \
                    open(partial, "ab") as handle:
                http_get(location, handle, resume_size=already, headers=headers,
                         expected_size=size, displayed_filename=label,
                         tqdm_class=reporter_tqdm(reporter, label))
        except HubUnavailableError as exc:
            raise HubUnavailableError(f"{label}: the download stopped ({exc.reason})",
                                      offline_mode=exc.offline_mode,
                                      hint=RESUME_NOTE) from None
        except OSError as exc:
            got = partial.stat().st_size if partial.exists() else 0
            raise JobError(f"{label}: the download stopped at {format_bytes(got)} of "
                           f"{format_bytes(size)} ({exc.strerror or type(exc).__name__})",
                           path=partial, hint=RESUME_NOTE) from None
        check_cancel(reporter)

    def _link_into_cache(self, cache: Path) -> Path:
        """The blob is in place: huggingface_hub adds the snapshot link and the ref."""
        from huggingface_hub import hf_hub_download

        with hub_errors(self.repo_id, self.filename, self.revision, hub_endpoint()):
            return Path(hf_hub_download(self.repo_id, self.filename, revision=self.revision,
                                        cache_dir=cache, endpoint=hub_endpoint()))


class _FileProgress:
    """Forwards one file's progress as progress through several files' bytes."""

    def __init__(self, outer: Reporter, before: int, total: int) -> None:
        self.outer, self.before, self.total = outer, before, total

    def progress(self, done: float, total: float, text: str = "") -> None:
        if text.startswith("verifying"):
            self.outer.progress(self.before, self.total, text)
        else:
            self.outer.progress(self.before + done, self.total, text)

    def log(self, level: LogLevel, text: str) -> None:
        self.outer.log(level, text)

    def cancelled(self) -> bool:
        return self.outer.cancelled()


@dataclass(frozen=True)
class RepoDownloadRequest:
    """Job: download several files of a repo (all of them by default, as snapshot_download
    does), one after the other, each resumable and verified as `DownloadRequest` does."""

    repo_id: str
    files: tuple[str, ...] = ()  # empty: every file of the repo
    revision: str = "main"
    output_dir: Path | None = None
    cache_dir: Path | None = None
    progress_unit: ProgressUnit = "bytes"

    @property
    def title(self) -> str:
        what = f"{len(self.files)} files" if self.files else "all files"
        return f"Download {what} of {self.repo_id}"

    def run(self, reporter: Reporter) -> list[DownloadResult]:
        from app.core.hub.repo_files import list_repo

        check_repo_id(self.repo_id)
        listing = list_repo(self.repo_id, self.revision)
        sizes = {f.name: f.size or 0 for f in listing.files}
        names = self.files or tuple(sizes)
        missing = [n for n in names if n not in sizes]
        if missing:
            raise OptionError(f"{self.repo_id} has no file {missing[0]!r}")
        total = sum(sizes[n] for n in names)
        where = self.output_dir or Path(self.cache_dir or _default_cache())
        free = probe_disk(where).free_bytes
        if disk_needed(total, 0) > free:
            # Partials already on disk count as free to come: each file checks again exactly.
            reporter.log("warning", f"{format_bytes(total)} to download and "
                                    f"{format_bytes(free)} free at {where}; files that do not "
                                    "fit will be refused")
        results, before = [], 0
        for name in names:
            check_cancel(reporter)
            request = DownloadRequest(self.repo_id, name, self.revision, self.output_dir,
                                      self.cache_dir)
            results.append(request.run(_FileProgress(reporter, before, total)))
            before += sizes[name]
        reporter.progress(total, total, f"{len(results)} file(s) of {self.repo_id}")
        return results


def _default_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
