"""A bounds-checked safetensors header reader (the JSON header only, no tensor data).

`safetensors.safe_open` is what reads tensor data; for a scan we need the header of every shard
fast, each entry's offsets (to name a truncated tensor), and a clear error for a header length
that points past the end of the file instead of a generic exception.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import FormatError

# safetensors itself refuses headers over 100 MB; so do we, before allocating them.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


@dataclass(frozen=True)
class SafetensorsEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    entries: tuple[SafetensorsEntry, ...]
    metadata: dict[str, str]
    data_start: int
    file_size: int

    def truncated_entries(self) -> list[SafetensorsEntry]:
        return [e for e in self.entries if e.end > self.file_size]

    def by_name(self) -> dict[str, SafetensorsEntry]:
        return {e.name: e for e in self.entries}


def _entry(name: str, raw: Any, data_start: int, path: Path) -> SafetensorsEntry:
    if not isinstance(raw, dict):
        raise FormatError("header entry is not an object", path=path, tensor=name)
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise FormatError(f"unknown dtype {dtype!r}", path=path, tensor=name)
    if (not isinstance(shape, list) or
            not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise FormatError(f"invalid shape {shape!r}", path=path, tensor=name)
    if (not isinstance(offsets, list) or len(offsets) != 2 or
            not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[1] < offsets[0]):
        raise FormatError(f"invalid data_offsets {offsets!r}", path=path, tensor=name)
    count = math.prod(shape)
    expected = (count * DTYPE_BITS[dtype] + 7) // 8
    if offsets[1] - offsets[0] != expected:
        raise FormatError(
            f"holds {offsets[1] - offsets[0]} bytes but {dtype} {shape} needs {expected}",
            path=path, tensor=name)
    return SafetensorsEntry(name, dtype, tuple(shape), data_start + offsets[0],
                            data_start + offsets[1])


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Parse one .safetensors file's header; raise `FormatError` if it is unusable.

    Tensor data that runs past the end of the file is not an error here
    (`truncated_entries()` names it), so a scan can report which tensor is cut off.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise FormatError(f"only {file_size} bytes: not a safetensors file", path=path,
                                  hint="re-download the file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > file_size - 8:
                raise FormatError(
                    f"header length {header_len} points past the end of the file "
                    f"({file_size} bytes): the file is truncated or not safetensors",
                    path=path, hint="re-download the file")
            if header_len > MAX_HEADER_BYTES:
                raise FormatError(f"header of {header_len} bytes exceeds the 100 MB limit",
                                  path=path)
            raw_header = handle.read(header_len)
    except OSError as exc:
        raise FormatError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    try:
        header = json.loads(raw_header)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, a 5,000-digit number
        raise FormatError(f"header is not valid JSON ({exc})", path=path,
                          hint="the file is corrupt; re-download it") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", path=path)
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise FormatError("__metadata__ is not an object", path=path)
    entries = tuple(_entry(name, raw, data_start, path) for name, raw in header.items())
    return SafetensorsHeader(path, entries, {str(k): str(v) for k, v in metadata.items()},
                             data_start, file_size)


def read_entry_bytes(header: SafetensorsHeader, entry: SafetensorsEntry,
                     limit: int = 1 << 20) -> bytes:
    """The raw bytes of one small tensor (e.g. a bnb quant state), refusing large ones."""
    if entry.n_bytes > limit:
        raise FormatError(f"{entry.n_bytes} bytes is too large to read as metadata",
                          path=header.path, tensor=entry.name)
    with open(header.path, "rb") as handle:
        handle.seek(entry.begin)
        data = handle.read(entry.n_bytes)
    if len(data) != entry.n_bytes:
        raise FormatError("tensor data is truncated", path=header.path, tensor=entry.name)
    return data
