"""GGUF headers read over HTTP range requests, so a file's fit is known before downloading it.

The first request asks for the first megabyte; while the header reader answers `NeedMoreBytes`,
the prefix grows (at least doubling, at least to what the reader asked for) by fetching only
the missing range, up to a ceiling that no real header reaches (a hostile count cannot make
Modelyard download a whole file as "header").
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from app.core.errors import FormatError
from app.core.formats.gguf_header import GGUFHeader, NeedMoreBytes, parse_gguf_header
from app.core.formats.gguf_model import describe_gguf
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.hub.client import ensure_online, hub_endpoint
from app.core.hub.errors import hub_errors
from app.core.hub.repo_files import GGUFEntry
from app.core.jobs import NullReporter, Reporter, check_cancel

FIRST_REQUEST_BYTES = 1 << 20
# Llama 3's 128k-token vocabulary and merges make a header of about 8 MiB.
MAX_HEADER_BYTES = 256 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def remote_path(repo_id: str, filename: str) -> Path:
    """The path a remote file carries in messages and ModelInfo: owner/repo/file."""
    return Path(repo_id) / filename


def fetch_range(url: str, start: int, end: int) -> tuple[bytes, int | None]:
    """Bytes [start, end] of the file at `url` and the file's size if the server said it."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end}",
               "Accept-Encoding": "identity"}
    response = get_session().get(url, headers=headers, follow_redirects=True)
    hf_raise_for_status(response)
    content = response.content
    total: int | None = None
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    if response.status_code == 206 and match:
        if int(match[1]) != start:
            raise FormatError(f"the server sent bytes from {match[1]}, not {start}")
        total = int(match[3]) if match[3] != "*" else None
    elif response.status_code == 200:
        # A server that ignores Range sends the whole file: keep only what was asked for.
        total = len(content)
        content = content[start:end + 1]
    return content, total


def read_remote_gguf_header(repo_id: str, filename: str, revision: str = "main",
                            size: int | None = None,
                            reporter: Reporter | None = None) -> GGUFHeader:
    """The header of one GGUF file on the Hub, read with range requests."""
    from huggingface_hub import hf_hub_url

    reporter = reporter or NullReporter()
    ensure_online()
    endpoint = hub_endpoint()
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    path = remote_path(repo_id, filename)
    data = bytearray()
    wanted = FIRST_REQUEST_BYTES
    while True:
        check_cancel(reporter)
        if size is not None:
            wanted = min(wanted, size)
        with hub_errors(repo_id, filename, revision, endpoint):
            chunk, total = fetch_range(url, len(data), wanted - 1)
        data += chunk
        size = size if size is not None else total
        if size is None:
            raise FormatError("the server did not say how large the file is", path=path)
        try:
            return parse_gguf_header(memoryview(bytes(data)), path, size)
        except NeedMoreBytes as more:
            if len(data) >= size or not chunk:
                raise FormatError("the file ends inside its header", path=path) from None
            wanted = max(more.needed, 2 * len(data))
            if wanted > MAX_HEADER_BYTES:
                raise FormatError(
                    f"the header claims more than {format_bytes(MAX_HEADER_BYTES)}; no real "
                    "GGUF header is that large", path=path) from None


def describe_remote_gguf(repo_id: str, entry: GGUFEntry, revision: str = "main",
                         sizes: dict[str, int] | None = None,
                         reporter: Reporter | None = None) -> ModelInfo:
    """A GGUF entry of a Hub repo described from its remote headers, as `inspect` describes
    the same file on disk (every shard's header is read: each holds its own tensors)."""
    sizes = sizes or {}
    headers = {remote_path(repo_id, name): name for name in entry.files}

    def read(path: Path) -> GGUFHeader:
        name = headers[path]
        return read_remote_gguf_header(repo_id, name, revision, sizes.get(name), reporter)

    model = describe_gguf(list(headers), entry.shard_count, read_header=read)
    return replace(model, source="hub", repo_id=repo_id)
