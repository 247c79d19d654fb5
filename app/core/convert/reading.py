"""Reading input tensors in row chunks with explicit reads, and decoding them to float32.

Explicit reads (not mmap) keep the peak RSS at the chunk: every page of a memory-mapped file
that is touched counts in RSS, so mapping a 2 GB shard and reading it through would grow RSS
to 2 GB. Files are opened read-only and never written.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from app.core.convert.plan import SourceSlice, StoredTensor
from app.core.errors import FormatError, UnsupportedError
from app.core.quant import can_dequantize, dequantize

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
}
COMPANION_DTYPES: dict[str, torch.dtype] = {**TORCH_DTYPES, "U8": torch.uint8, "I8": torch.int8}


class SourceReader:
    """Opens each input file once, read-only; reads byte ranges into fresh CPU tensors with
    positional reads, so several threads can read at once."""

    def __init__(self) -> None:
        self._files: dict[Path, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: Path) -> int:
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except OSError as exc:
                    raise FormatError(f"cannot open ({exc.strerror or exc})",
                                      path=path) from None
                self._files[path] = fd
            return fd

    def read(self, path: Path, offset: int, n_bytes: int, tensor: str) -> torch.Tensor:
        fd = self._fd(path)
        buffer = torch.empty(n_bytes, dtype=torch.uint8)
        view = buffer.numpy().data
        done = 0
        try:
            while done < n_bytes:
                got = os.preadv(fd, [view[done:]], offset + done)
                if not got:
                    break
                done += got
        except OSError as exc:
            raise FormatError(f"cannot read ({exc.strerror or exc})", path=path,
                              tensor=tensor) from None
        if done != n_bytes:
            raise FormatError(f"truncated: the data ends {n_bytes - done} bytes early",
                              path=path, tensor=tensor, hint="re-download the file")
        return buffer

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_rows(raw: torch.Tensor, dtype: str, n_rows: int, row_length: int) -> torch.Tensor:
    """Raw bytes of `n_rows` rows → float32 [n_rows, row_length] on `raw`'s device."""
    torch_dtype = TORCH_DTYPES.get(dtype)
    if torch_dtype is not None:
        return raw.view(torch_dtype).to(torch.float32).reshape(n_rows, row_length)
    if not can_dequantize(dtype):
        raise UnsupportedError(f"cannot read {dtype} tensors")
    return dequantize(raw.reshape(n_rows, -1), dtype).reshape(n_rows, row_length)


def _companion(reader: SourceReader, stored: StoredTensor, device: torch.device,
               first: int = 0, count: int | None = None) -> torch.Tensor:
    """A companion tensor (or elements [first, first + count) of it) on `device`."""
    dtype = COMPANION_DTYPES[stored.dtype]
    width = torch.empty(0, dtype=dtype).element_size()
    n_bytes = stored.n_bytes - first * width if count is None else count * width
    raw = reader.read(stored.file, stored.offset + first * width, n_bytes, stored.tensor)
    return raw.to(device, non_blocking=True).view(dtype)


def decode_bnb_rows(reader: SourceReader, piece: SourceSlice, first_row: int, n_rows: int,
                    raw: torch.Tensor) -> torch.Tensor:
    """Rows [first_row, first_row + n_rows) of a bitsandbytes weight, whose packed bytes are
    `raw` (on the job's device), → float32 [n_rows, row_length], as bitsandbytes computes
    them (4-bit values in the quant state's dtype, then widened exactly)."""
    from app.core.quant import bnb

    encoding = piece.bnb
    assert encoding is not None
    device = raw.device
    if encoding.kind == "INT8":
        assert encoding.scb is not None
        scales = _companion(reader, encoding.scb, device, first_row, n_rows)
        weight = raw.view(torch.int8).reshape(n_rows, piece.row_length)
        return bnb.dequantize_int8(weight, scales, tensor=piece.tensor)
    state, absmax = encoding.state, encoding.absmax
    assert state is not None and absmax is not None
    first = first_row * piece.row_length
    count = n_rows * piece.row_length
    first_block, last_block = first // state.blocksize, (first + count - 1) // state.blocksize
    codes = _companion(reader, absmax, device, first_block, last_block - first_block + 1)
    nested = [None if stored is None else _companion(reader, stored, device)
              for stored in (encoding.nested_absmax, encoding.nested_quant_map)]
    scales = bnb.dequantize_absmax(codes, state, nested[0], nested[1], first_block=first_block,
                                   tensor=piece.tensor)
    values = bnb.dequantize_4bit(raw, scales, state, first_element=first, n_elements=count,
                                 tensor=piece.tensor)
    return values.to(torch.float32).reshape(n_rows, piece.row_length)


def read_rows(reader: SourceReader, piece: SourceSlice, first_row: int, n_rows: int
              ) -> torch.Tensor:
    """Rows [first_row, first_row + n_rows) of one source slice → float32 on the CPU, whatever
    holds them: inline values, a stored tensor of any readable type, or a bitsandbytes weight."""
    if piece.values is not None:
        raw = torch.tensor(piece.values, dtype=torch.float32).view(torch.uint8)
        values = decode_rows(raw, piece.dtype, piece.n_rows, piece.row_length)
        return values[first_row:first_row + n_rows]
    assert piece.file is not None
    raw = reader.read(piece.file, piece.offset + first_row * piece.row_bytes,
                      n_rows * piece.row_bytes, piece.tensor)
    if piece.bnb is not None:
        return decode_bnb_rows(reader, piece, first_row, n_rows, raw)
    return decode_rows(raw, piece.dtype, n_rows, piece.row_length)
