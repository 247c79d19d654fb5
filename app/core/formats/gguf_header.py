"""A bounds-checked, header-only GGUF reader.

gguf-py's `GGUFReader` materialises every metadata value (SmolLM2's 100k-token vocabulary takes
it about 5 s) and trusts the counts in the header. A scan must read a thousand headers in well
under a second and must not allocate what a hostile header claims, so this reader walks the
header in place: every count and length is checked against the bytes that remain before it is
used, long arrays are skipped (their length is kept) unless asked for, and tensor data is never
touched. Type tables (value types, quant block sizes) are gguf-py's own.

The buffer may also be a prefix of a longer file (a header read over HTTP ranges): then a read
past the buffer that still lies inside the file raises `NeedMoreBytes` with the prefix length
that read needs, while one past the end of the file is the same `FormatError` as ever.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from app.core.errors import FormatError, UnsupportedError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# Arrays longer than this are skipped unless the caller names them: tokens, merges, scores.
SMALL_ARRAY = 64

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALAR_FORMATS.items()}
_SCALAR_SIZES = {t: s.size for t, s in _SCALAR_STRUCTS.items()}
_U32, _U64 = _SCALAR_STRUCTS[GGUFValueType.UINT32], _SCALAR_STRUCTS[GGUFValueType.UINT64]
# The smallest encoding of one item, used to reject counts the remaining bytes cannot hold.
_MIN_ITEM_SIZE = {**_SCALAR_SIZES, GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
_MIN_KV_SIZE = 8 + 4 + 1
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 8 + 4 + 8


class NeedMoreBytes(Exception):
    """The buffer is a prefix of the file and the header goes on past it.

    `needed` is the prefix length the failed read needs (a lower bound for the whole header);
    the caller fetches at least that much and parses again.
    """

    def __init__(self, needed: int) -> None:
        self.needed = needed
        super().__init__(f"the header needs at least {needed} bytes")


@dataclass(frozen=True)
class SkippedArray:
    """An array value that was not loaded: its item type and length."""

    item_type: GGUFValueType
    length: int


@dataclass(frozen=True)
class GGUFTensorEntry:
    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: ne[0] is the row length
    offset: int  # absolute offset of the data in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    fields: dict[str, Any]
    tensors: tuple[GGUFTensorEntry, ...]
    alignment: int
    data_offset: int
    file_size: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def architecture(self) -> str | None:
        arch = self.fields.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def arch_field(self, suffix: str, default: Any = None) -> Any:
        """`{architecture}.{suffix}`, e.g. `arch_field("block_count")`."""
        arch = self.architecture
        return self.fields.get(f"{arch}.{suffix}", default) if arch else default

    def truncated_tensors(self) -> list[GGUFTensorEntry]:
        return [t for t in self.tensors if t.offset + t.n_bytes > self.file_size]


class _Cursor:
    def __init__(self, buf: memoryview, path: Path, file_size: int | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.path = path
        self.file_size = max(file_size or 0, self.end)

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n_bytes: int, what: str) -> None:
        if n_bytes < 0 or self.pos + n_bytes > self.end:
            self.more_or_fail(self.pos + n_bytes if n_bytes >= 0 else -1)
            raise FormatError(
                f"truncated or corrupt header: {what} would need {n_bytes} bytes at offset "
                f"{self.pos}, only {self.remaining} remain",
                path=self.path, hint="re-download or re-convert the file")

    def more_or_fail(self, needed: int) -> None:
        """Ask for a longer prefix when the read stays inside the file; return otherwise, so
        the caller raises its own "truncated or corrupt" error."""
        if self.end < needed <= self.file_size:
            raise NeedMoreBytes(needed)

    def scalar(self, value_type: GGUFValueType, what: str) -> Any:
        reader = _SCALAR_STRUCTS[value_type]
        if self.pos + reader.size > self.end:
            self.need(reader.size, what)
        (value,) = reader.unpack_from(self.buf, self.pos)
        self.pos += reader.size
        return value

    def u32(self, what: str) -> int:
        if self.pos + 4 > self.end:
            self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        if self.pos + 8 > self.end:
            self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        length = self.u64(what)
        if self.pos + length > self.end:
            self.need(length, what)
        raw = bytes(self.buf[self.pos:self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise FormatError(f"unknown metadata value type {raw} for {what}",
                              path=self.path) from None


def _read_value(cur: _Cursor, value_type: GGUFValueType, key: str, load_all: bool,
                depth: int = 0) -> Any:
    if value_type == GGUFValueType.STRING:
        return cur.string(key)
    if value_type != GGUFValueType.ARRAY:
        return cur.scalar(value_type, key)
    if depth > 2:
        raise FormatError(f"metadata {key!r} nests arrays too deeply", path=cur.path)
    item_type = cur.value_type(f"items of {key}")
    length = cur.u64(f"length of {key}")
    cur.need(length * _MIN_ITEM_SIZE[item_type], f"array {key!r} of {length} items")
    if load_all or length <= SMALL_ARRAY:
        if item_type in _SCALAR_SIZES:
            size = _SCALAR_SIZES[item_type]
            fmt = "<" + _SCALAR_FORMATS[item_type][1] * length
            values = list(struct.unpack_from(fmt, cur.buf, cur.pos))
            cur.pos += size * length
            return values
        return [_read_value(cur, item_type, key, load_all, depth + 1) for _ in range(length)]
    if item_type in _SCALAR_SIZES:
        cur.pos += _SCALAR_SIZES[item_type] * length
    elif item_type == GGUFValueType.STRING:
        _skip_strings(cur, length, key)
    else:
        for _ in range(length):
            _read_value(cur, item_type, key, False, depth + 1)
    return SkippedArray(item_type, length)


def _skip_strings(cur: _Cursor, count: int, key: str) -> None:
    # A vocabulary is ~100k strings: a tight loop here keeps a scan of SmolLM2 at milliseconds.
    buf, pos, end, unpack = cur.buf, cur.pos, len(cur.buf), struct.Struct("<Q").unpack_from
    for _ in range(count):
        if pos + 8 > end:
            cur.more_or_fail(pos + 8)
            break
        pos += 8 + unpack(buf, pos)[0]
    else:
        if pos <= end:
            cur.pos = pos
            return
        cur.more_or_fail(pos)
    raise FormatError(f"truncated or corrupt header: the strings of array {key!r} run past "
                      f"the end of the file", path=cur.path,
                      hint="re-download or re-convert the file")


def _tensor_entry(cur: _Cursor) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
    name = cur.string("tensor name")
    n_dims = cur.u32(f"dimension count of tensor {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise FormatError(f"tensor claims {n_dims} dimensions (GGUF allows 1 to {MAX_DIMS})",
                          path=cur.path, tensor=name)
    shape = tuple(cur.u64(f"shape of tensor {name!r}") for _ in range(n_dims))
    raw_type = cur.u32(f"type of tensor {name!r}")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise UnsupportedError(
            f"unknown tensor type {raw_type}", path=cur.path, tensor=name,
            hint="the file was written by a newer llama.cpp; update gguf-py") from None
    offset = cur.u64(f"data offset of tensor {name!r}")
    return name, ggml_type, shape, offset


def tensor_n_bytes(ggml_type: GGMLQuantizationType, shape: tuple[int, ...],
                   path: Path | None = None, name: str | None = None) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if shape and shape[0] % block_size:
        raise FormatError(
            f"row length {shape[0]} is not a multiple of the {ggml_type.name} block size "
            f"{block_size}", path=path, tensor=name)
    count = math.prod(shape)
    return count // block_size * type_size


def parse_gguf_header(buf: memoryview, path: Path, file_size: int,
                      load_arrays: frozenset[str] = frozenset()) -> GGUFHeader:
    """Parse a header from `buf`, the whole file or (when `file_size` is larger) a prefix of
    it; a prefix too short for the header raises `NeedMoreBytes`."""
    cur = _Cursor(buf, path, file_size)
    cur.need(4, "magic")
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise FormatError(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})",
                          path=path)
    cur.pos = 4
    version = cur.u32("version")
    if version == 1:
        raise UnsupportedError("GGUF version 1 is obsolete", path=path,
                               hint="re-convert the model with a current converter")
    if version not in (2, 3):
        raise FormatError(f"unknown GGUF version {version}", path=path,
                          hint="the file is corrupt or from a newer format revision")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    cur.need(n_kv * _MIN_KV_SIZE, f"{n_kv} metadata entries")
    cur.need(n_tensors * _MIN_TENSOR_INFO_SIZE + n_kv * _MIN_KV_SIZE,
             f"{n_tensors} tensor entries")

    fields: dict[str, Any] = {}
    for index in range(n_kv):
        key = cur.string(f"metadata key #{index}")
        value_type = cur.value_type(f"metadata {key!r}")
        fields[key] = _read_value(cur, value_type, key, key in load_arrays)

    raw_entries = [_tensor_entry(cur) for _ in range(n_tensors)]
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise FormatError(f"general.alignment {alignment!r} is not a power of two", path=path)
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    tensors = tuple(
        GGUFTensorEntry(name, ggml_type, shape, data_offset + offset,
                        tensor_n_bytes(ggml_type, shape, path, name))
        for name, ggml_type, shape, offset in raw_entries)
    return GGUFHeader(path, version, fields, tensors, alignment, data_offset, file_size)


def has_gguf_magic(path: str | Path) -> bool:
    """Whether the file starts with the GGUF magic (for files without the .gguf suffix, such
    as Ollama's content-addressed blobs)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_header(path: str | Path, load_arrays: frozenset[str] = frozenset()) -> GGUFHeader:
    """Read the header of one GGUF file (one shard of a split model).

    Raises `FormatError` for anything that is not a well-formed GGUF header; truncated tensor
    *data* is not an error here (see `GGUFHeader.truncated_tensors`), so a scan can say which
    tensor is cut off.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            if file_size == 0:
                raise FormatError("empty file", path=path)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return parse_gguf_header(view, path, file_size, load_arrays)
                finally:
                    view.release()
    except OSError as exc:
        raise FormatError(f"cannot read file ({exc.strerror or exc})", path=path) from None
