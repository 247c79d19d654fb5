"""Importance matrices in llama.cpp's two file formats: reading, checking, writing.

An importance matrix holds, for each weight matrix a model multiplies activations by, the sum
of the squared activations that met each of its input columns (`NAME.in_sum2`) and how many
activations were summed (`NAME.counts`), one row of each per expert for a stacked MoE tensor.
llama-quantize divides one by the other to get the per-column weights its quantizers use.

- GGUF (what llama.cpp's `llama-imatrix` writes today): tensors `NAME.in_sum2` [ne0, n_mat] and
  `NAME.counts` [1, n_mat], keys `imatrix.datasets`, `imatrix.chunk_count`,
  `imatrix.chunk_size`.
- The older `.dat` format: int32 entry count; per entry int32 name length, the name, int32
  ncall, int32 nval, nval float32 (already divided by the count and multiplied by ncall);
  optionally int32 chunk count, int32 length and the dataset name.

Both readers check every length against the bytes that remain, so a corrupt file is a
FormatError naming it, never a crash or a huge allocation.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from app.core.errors import FormatError, UnsupportedError
from app.core.formats.gguf_header import GGUF_MAGIC, read_gguf_header

SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
# A .dat entry name longer than this is a corrupt length, not a tensor name.
_MAX_NAME = 4096


@dataclass(frozen=True)
class ImatrixEntry:
    """One weight matrix: squared activation sums per column, per expert."""

    sums: np.ndarray  # float32 [n_mat, ne0]
    counts: np.ndarray  # int64 [n_mat]; for a .dat entry, its ncall
    legacy: bool = False

    @property
    def n_mat(self) -> int:
        return int(self.sums.shape[0])

    @property
    def n_columns(self) -> int:
        return int(self.sums.shape[1])

    def weights(self) -> np.ndarray:
        """The per-column weights llama-quantize passes to the quantizers, float32 [n_mat,
        ne0], computed as its load_imatrix does (a matrix that was never used weighs 1)."""
        if self.legacy:
            ncall = int(self.counts[0]) if self.counts.size else 0
            if ncall <= 0:
                return self.sums.copy()
            return (self.sums / np.float32(ncall)).astype(np.float32)
        counts = self.counts.astype(np.float32).reshape(-1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            divided = (self.sums / np.where(counts > 0, counts, np.float32(1))).astype(np.float32)
        return np.where(counts > 0, divided, np.float32(1)).astype(np.float32)


@dataclass(frozen=True)
class ImportanceMatrix:
    path: Path | None
    entries: Mapping[str, ImatrixEntry]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False

    def weights(self, name: str) -> np.ndarray | None:
        entry = self.entries.get(name)
        return None if entry is None else entry.weights()


def read_imatrix(path: str | Path) -> ImportanceMatrix:
    """Read an importance matrix in either format (GGUF by its magic, else .dat)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise FormatError(f"cannot read the importance matrix ({exc.strerror or exc})",
                          path=path) from None
    if magic == GGUF_MAGIC:
        matrix = _read_gguf(path)
    else:
        matrix = _read_dat(path)
    if not matrix.entries:
        raise FormatError("the importance matrix has no entries", path=path)
    for name, entry in matrix.entries.items():
        if not np.isfinite(entry.sums).all():
            # llama-quantize refuses these too: a NaN weight would poison every search.
            raise FormatError("the importance matrix holds a non-finite value", path=path,
                              tensor=name)
    return matrix


def _read_gguf(path: Path) -> ImportanceMatrix:
    header = read_gguf_header(path, load_arrays=frozenset({KEY_DATASETS}))
    truncated = header.truncated_tensors()
    if truncated:
        raise FormatError("the file is truncated", path=path, tensor=truncated[0].name)
    tensors = {t.name: t for t in header.tensors}
    sums_for: dict[str, str] = {}
    counts_for: dict[str, str] = {}
    for name in tensors:
        if name.endswith(SUMS_SUFFIX):
            sums_for[name[:-len(SUMS_SUFFIX)]] = name
        elif name.endswith(COUNTS_SUFFIX):
            counts_for[name[:-len(COUNTS_SUFFIX)]] = name
    if not sums_for and not counts_for:
        raise FormatError("a GGUF without importance matrix tensors (NAME.in_sum2 and "
                          "NAME.counts)", path=path, hint="choose an imatrix file")
    entries: dict[str, ImatrixEntry] = {}
    with open(path, "rb") as handle:
        for base in sorted(set(sums_for) | set(counts_for)):
            if base not in sums_for or base not in counts_for:
                raise FormatError("sums and counts do not come in pairs", path=path,
                                  tensor=base)
            sums_t, counts_t = tensors[sums_for[base]], tensors[counts_for[base]]
            for t in (sums_t, counts_t):
                if t.ggml_type != GGMLQuantizationType.F32:
                    raise FormatError(f"{t.type_name} instead of F32", path=path, tensor=t.name)
            n_mat = counts_t.n_elements
            if n_mat < 1 or sums_t.n_elements % n_mat or sums_t.n_elements == 0:
                raise FormatError(f"{sums_t.n_elements} sums cannot be split over {n_mat} "
                                  "counts", path=path, tensor=base)
            sums = _read_f32(handle, sums_t.offset, sums_t.n_elements)
            counts = _read_f32(handle, counts_t.offset, n_mat)
            if not np.isfinite(counts).all() or (counts < 0).any():
                raise FormatError("a count is negative or not finite", path=path, tensor=base)
            # llama.cpp rounds the stored float counts to integers (std::lround).
            entries[base] = ImatrixEntry(sums.reshape(n_mat, -1),
                                         np.floor(counts.astype(np.float64) + 0.5)
                                         .astype(np.int64))
    datasets = header.get(KEY_DATASETS, [])
    datasets = tuple(str(d) for d in datasets) if isinstance(datasets, list) else ()
    return ImportanceMatrix(path, entries, datasets, _u32(header.get(KEY_CHUNK_COUNT)),
                            _u32(header.get(KEY_CHUNK_SIZE)))


def _u32(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _read_f32(handle: BinaryIO, offset: int, count: int) -> np.ndarray:
    handle.seek(offset)
    data = handle.read(count * 4)
    return np.frombuffer(data, dtype="<f4", count=count).astype(np.float32)


class _DatCursor:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n_bytes: int, what: str) -> bytes:
        if n_bytes < 0 or self.pos + n_bytes > len(self.data):
            raise FormatError(f"truncated or corrupt importance matrix: {what} needs {n_bytes} "
                              f"bytes at offset {self.pos}, {len(self.data) - self.pos} remain",
                              path=self.path, hint="choose a complete imatrix file")
        chunk = self.data[self.pos:self.pos + n_bytes]
        self.pos += n_bytes
        return chunk

    def i32(self, what: str) -> int:
        return int(struct.unpack("<i", self.take(4, what))[0])

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _read_dat(path: Path) -> ImportanceMatrix:
    data = path.read_bytes()
    cur = _DatCursor(data, path)
    n_entries = cur.i32("the entry count")
    # The smallest entry is 16 bytes (lengths, ncall, nval, one value).
    if n_entries < 1 or n_entries * 16 > cur.remaining:
        raise FormatError(f"not an importance matrix (entry count {n_entries} for a "
                          f"{len(data)}-byte file)", path=path,
                          hint="choose a .dat or .gguf file written by llama-imatrix")
    entries: dict[str, ImatrixEntry] = {}
    for index in range(n_entries):
        length = cur.i32(f"the name length of entry {index}")
        if not 0 < length <= _MAX_NAME:
            raise FormatError(f"entry {index} has a name length of {length}", path=path,
                              hint="the file is corrupt or not an importance matrix")
        try:
            name = cur.take(length, f"the name of entry {index}").decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"entry {index} has a name that is not text", path=path) from None
        ncall = cur.i32(f"the call count of {name}")
        nval = cur.i32(f"the value count of {name}")
        if nval < 1:
            raise FormatError(f"{nval} values", path=path, tensor=name)
        values = np.frombuffer(cur.take(4 * nval, f"the values of {name}"), dtype="<f4")
        entries[name] = ImatrixEntry(values.astype(np.float32).reshape(1, -1),
                                     np.array([ncall], dtype=np.int64), legacy=True)
    chunk_count, datasets = 0, ()
    if cur.remaining >= 4:
        chunk_count = max(0, cur.i32("the chunk count"))
        if cur.remaining >= 4:
            length = cur.i32("the dataset name length")
            if 0 < length <= cur.remaining:
                datasets = (cur.take(length, "the dataset name").decode("utf-8", "replace"),)
    return ImportanceMatrix(path, entries, datasets, chunk_count, 0, legacy=True)


def write_imatrix(path: str | Path, sums: Mapping[str, np.ndarray],
                  counts: Mapping[str, np.ndarray], *, datasets: Iterable[str],
                  chunk_count: int, chunk_size: int) -> None:
    """Write the GGUF format as llama-imatrix does: names sorted, `in_sum2` [ne0, n_mat],
    `counts` [1, n_mat], float32. `sums[name]` is [n_mat, ne0], `counts[name]` [n_mat]."""
    writer = GGUFWriter(Path(path), arch="")
    # llama-imatrix writes general.type and the imatrix keys, no architecture.
    writer.kv_data[0].pop("general.architecture", None)
    writer.add_type("imatrix")
    writer.add_array(KEY_DATASETS, list(datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, chunk_count)
    writer.add_uint32(KEY_CHUNK_SIZE, chunk_size)
    for name in sorted(sums):
        values = np.ascontiguousarray(sums[name], dtype=np.float32)
        n_mat = values.shape[0]
        writer.add_tensor(name + SUMS_SUFFIX, values.reshape(n_mat, -1))
        writer.add_tensor(name + COUNTS_SUFFIX,
                          np.asarray(counts[name], dtype=np.float32).reshape(n_mat, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# One expert of a stacked tensor stored as a tensor of its own (the split layout).
_SPLIT_EXPERT = re.compile(r"^(blk\.\d+\.ffn_(?:gate|up|down))\.(\d+)\.weight$")


def _stacked_name(split_name: str) -> tuple[str, int] | None:
    match = _SPLIT_EXPERT.match(split_name)
    return (f"{match.group(1)}_exps.weight", int(match.group(2))) if match else None


def resolve_weights(matrix: ImportanceMatrix, tensors: Mapping[str, tuple[int, int]],
                    ) -> dict[str, np.ndarray | None]:
    """The weights ([n_mat, ne0] float32) for each tensor to be quantized, None where the
    matrix has none: `tensors[name] = (ne0, n_mat)` (GGUF names; n_mat the experts of a
    stacked tensor, else 1).

    An expert stored on its own (`blk.N.ffn_up.E.weight`) takes row E of a stacked entry
    (`blk.N.ffn_up_exps.weight`), and a stacked tensor takes the rows of per-expert entries,
    so a matrix fits a model in either expert layout. Raises UnsupportedError, naming them,
    when the matrix has entries for tensors the model does not have or sizes that differ (it
    was made for another model); token_embd is spared the size check, as in llama-quantize.
    """
    split_of: dict[str, list[tuple[int, str]]] = {}
    for name in tensors:
        stacked = _stacked_name(name)
        if stacked is not None:
            split_of.setdefault(stacked[0], []).append((stacked[1], name))
    # Entries of per-expert tensors fit a stacked tensor of the model.
    known = set(tensors) | set(split_of) | {
        n for n in matrix.entries if (_stacked_name(n) or ("", 0))[0] in tensors}
    foreign = sorted(n for n in matrix.entries if n not in known)
    if foreign:
        raise UnsupportedError(
            f"the importance matrix was made for another model: it has entries for "
            f"{len(foreign)} tensors this model lacks ({_some(foreign)})", path=matrix.path,
            hint="use an importance matrix computed for this model")
    resolved: dict[str, np.ndarray | None] = {}
    wrong = []
    for name, (ne0, n_mat) in tensors.items():
        weights, found = _direct_or_stacked(matrix, name, ne0, n_mat, split_of)
        if found is not None and weights is None and name != "token_embd.weight":
            wrong.append(f"{name}: {found} values for {ne0} x {n_mat}")
        resolved[name] = weights
    if wrong:
        raise UnsupportedError(
            f"the importance matrix was made for another model: sizes differ for "
            f"{len(wrong)} tensors ({_some(wrong)})", path=matrix.path,
            hint="use an importance matrix computed for this model")
    return resolved


def _direct_or_stacked(matrix: ImportanceMatrix, name: str, ne0: int, n_mat: int,
                       split_of: Mapping[str, list[tuple[int, str]]],
                       ) -> tuple[np.ndarray | None, int | None]:
    """(weights or None, the number of values found when they do not fit, else None)."""
    entry = matrix.entries.get(name)
    if entry is not None:
        if entry.sums.size != ne0 * n_mat:
            return None, entry.sums.size
        return entry.weights().reshape(n_mat, ne0), None
    stacked = _stacked_name(name)
    if stacked is not None and stacked[0] in matrix.entries:
        entry = matrix.entries[stacked[0]]
        if entry.n_columns != ne0 or stacked[1] >= entry.n_mat:
            return None, entry.sums.size
        return entry.weights()[stacked[1]:stacked[1] + 1], None
    members = split_of.get(name)
    if members is None and name.endswith("_exps.weight"):
        base = name[:-len("_exps.weight")]
        rows = [matrix.entries.get(f"{base}.{e}.weight") for e in range(n_mat)]
        if any(rows) and all(r is not None and r.sums.size == ne0 for r in rows):
            return np.concatenate([r.weights() for r in rows if r is not None]), None
    return None, None


def check_against_model(matrix: ImportanceMatrix, tensors: Mapping[str, tuple[int, int]],
                        ) -> tuple[list[str], list[str]]:
    """resolve_weights' checks; returns (covered, not covered) tensor names."""
    resolved = resolve_weights(matrix, tensors)
    covered = [n for n, w in resolved.items() if w is not None]
    return covered, [n for n in resolved if resolved[n] is None]


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
