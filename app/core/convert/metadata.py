"""GGUF metadata as plain typed entries: built with gguf-py's own writer methods, copied from a
source file with gguf-py's reader, written back with `GGUFWriter.add_key_value`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter

from app.core.errors import FormatError


@dataclass(frozen=True)
class MetaEntry:
    key: str
    value: Any
    value_type: GGUFValueType
    sub_type: GGUFValueType | None = None  # item type of an array

    def summary(self) -> str:
        """The value as a short text: long arrays become their length."""
        if self.value_type == GGUFValueType.ARRAY and isinstance(self.value, (list, tuple)):
            if len(self.value) > 8:
                return f"[{len(self.value)} items]"
        text = repr(self.value)
        return text if len(text) <= 80 else text[:77] + "..."


_LENGTH = struct.Struct("<Q")
_ITEM_TYPES = {str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32,
               bool: GGUFValueType.BOOL, int: GGUFValueType.INT32}


def _pack_array(values: list[Any] | tuple[Any, ...], sub_type: GGUFValueType | None
                ) -> bytes | None:
    """The bytes gguf-py packs for a little-endian array (item type, count, items), in one
    struct call or one join; None for what the fast path leaves to gguf-py (empty, nested or
    mixed arrays, which it refuses or handles itself)."""
    if not values:
        return None
    item_type = sub_type
    if item_type is None:
        first = type(values[0])
        item_type = _ITEM_TYPES.get(first)
        if item_type is None or not all(type(v) is first for v in values):
            return None
    head = struct.pack("<IQ", item_type, len(values))
    if item_type == GGUFValueType.STRING:
        parts = [head]
        for value in values:
            encoded = value.encode("utf-8") if isinstance(value, str) else value
            if not isinstance(encoded, (bytes, bytearray)):
                return None
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    fmt = GGUFWriter._simple_value_packing.get(item_type)
    if fmt is None:
        return None
    return head + struct.pack(f"<{len(values)}{fmt}", *values)


class FastGGUFWriter(GGUFWriter):
    """gguf-py's writer, packing metadata arrays whole instead of item by item: the same bytes,
    many times faster for a vocabulary of tens of thousands of tokens (packed twice: once to
    size the plan, once to write)."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if (vtype == GGUFValueType.ARRAY and self.endianess == GGUFEndian.LITTLE
                and isinstance(val, (list, tuple))):
            packed = _pack_array(val, sub_type)
            if packed is not None:
                return struct.pack("<I", vtype) + packed if add_vtype else packed
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def recording_writer(arch: str) -> GGUFWriter:
    """A GGUFWriter with no file: its `add_*` methods only record typed key/values."""
    return FastGGUFWriter(None, arch)


def entries_of(writer: GGUFWriter) -> tuple[MetaEntry, ...]:
    return tuple(MetaEntry(key, value.value, value.type, value.sub_type)
                 for key, value in writer.kv_data[0].items())


def add_entries(writer: GGUFWriter, entries: Iterable[MetaEntry]) -> None:
    for entry in entries:
        if entry.key == "general.architecture":
            continue  # the writer adds it itself, first
        writer.add_key_value(entry.key, entry.value, entry.value_type, entry.sub_type)


def replace_entry(entries: Iterable[MetaEntry], new: MetaEntry) -> tuple[MetaEntry, ...]:
    """`entries` with `new` in place of the entry of the same key (appended if absent)."""
    out = [new if e.key == new.key else e for e in entries]
    if not any(e.key == new.key for e in out):
        out.append(new)
    return tuple(out)


# Keys a reader reports that describe the file itself; the writer recomputes them.
_FILE_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
# Split-file bookkeeping of the source: the output is one file.
_SPLIT_PREFIX = "split."


def read_gguf_entries(path: Path) -> tuple[MetaEntry, ...]:
    """Every metadata key of a GGUF file with its exact value type (typed arrays included)."""
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, OSError) as exc:
        raise FormatError(f"cannot read GGUF metadata ({exc})", path=path) from None
    entries = []
    for key, field in reader.fields.items():
        if key in _FILE_KEYS or key.startswith(_SPLIT_PREFIX):
            continue
        main_type = field.types[0]
        sub_type = field.types[1] if main_type == GGUFValueType.ARRAY and len(field.types) > 1 \
            else None
        if main_type == GGUFValueType.ARRAY and sub_type == GGUFValueType.ARRAY:
            raise FormatError("nested metadata arrays are not supported", path=path)
        value = field.contents()
        entries.append(MetaEntry(key, value, main_type, sub_type))
    del reader
    return tuple(entries)
