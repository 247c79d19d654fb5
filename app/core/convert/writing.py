"""Streaming writers: a GGUF file (gguf-py writes the header, Modelyard the tensor data chunk by
chunk) and safetensors shards (header first, then data). A full disk becomes one clear error."""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
import torch
from gguf import GGMLQuantizationType

from app.core.convert.metadata import FastGGUFWriter, MetaEntry, add_entries
from app.core.convert.plan import TensorPlan
from app.core.errors import JobError

# HF's default shard size; a few GB per file keeps downloads and loaders happy.
SHARD_BYTES = 5 * 1000**3
SAFETENSORS_INDEX = "model.safetensors.index.json"


# Start writing to disk every this many bytes, while the next chunks are computed: the final
# fsync (atomic output) then has little left to wait for, and dirty pages never pile up.
WRITEBACK_BYTES = 64 * 1024 * 1024


def write_bytes(handle: BinaryIO, data: memoryview | bytes) -> None:
    """Every tensor byte goes through here (a test injects a full disk at this point)."""
    handle.write(data)


class Writeback:
    """Asks the kernel to write finished parts of a file to disk, asynchronously."""

    def __init__(self) -> None:
        self.started = 0

    def after_write(self, handle: BinaryIO) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        position = handle.tell()
        if position - self.started < WRITEBACK_BYTES:
            return
        handle.flush()
        # On Linux, DONTNEED on dirty pages starts their writeback without waiting for it.
        os.posix_fadvise(handle.fileno(), self.started, position - self.started,
                         os.POSIX_FADV_DONTNEED)
        self.started = position


def disk_error(exc: OSError, path: Path) -> JobError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return JobError("the disk is full; nothing was kept", path=path,
                        hint="free some space or write to another disk, then convert again")
    return JobError(f"cannot write ({exc.strerror or exc}); nothing was kept", path=path)


def _as_bytes(chunk: torch.Tensor) -> memoryview:
    array = chunk.contiguous().cpu().numpy()
    return np.ascontiguousarray(array).data.cast("B")


class _StreamSink:
    """Streams each tensor's chunks into the open file and checks the planned byte count."""

    where: Path  # named in disk errors
    _handle: BinaryIO | None
    _written: int
    _writeback: Writeback

    def write(self, chunk: torch.Tensor) -> int:
        assert self._handle is not None
        data = _as_bytes(chunk)
        try:
            write_bytes(self._handle, data)
            self._writeback.after_write(self._handle)
        except OSError as exc:
            raise disk_error(exc, self.where) from None
        self._written += data.nbytes
        return data.nbytes

    def check_written(self, tensor: TensorPlan) -> None:
        if self._written != tensor.n_bytes:
            raise JobError(f"wrote {self._written} bytes for {tensor.name}, planned "
                           f"{tensor.n_bytes}", path=self.where)


class GGUFSink(_StreamSink):
    """Write a GGUF: all tensor infos declared up front, then data in declaration order."""

    def __init__(self, path: Path, arch: str, entries: Iterable[MetaEntry],
                 tensors: Sequence[TensorPlan]) -> None:
        self.path = self.where = path
        self.writer = FastGGUFWriter(path, arch)
        add_entries(self.writer, entries)
        for tensor in tensors:
            self.writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32),
                                        tensor.n_bytes, GGMLQuantizationType[tensor.out_type])
        self.alignment = self.writer.data_alignment
        self._handle: BinaryIO | None = None
        self._written = 0  # bytes of the current tensor
        self._writeback = Writeback()

    def __enter__(self) -> GGUFSink:
        try:
            self.writer.write_header_to_file(self.path)
            self.writer.write_kv_data_to_file()
            self.writer.write_ti_data_to_file()
            assert self.writer.fout is not None
            self._handle = self.writer.fout[0]
            self._pad()
        except OSError as exc:
            self.writer.close()
            raise disk_error(exc, self.path) from None
        return self

    def _pad(self) -> None:
        assert self._handle is not None
        position = self._handle.tell()
        pad = -position % self.alignment
        if pad:
            write_bytes(self._handle, bytes(pad))

    def begin_tensor(self, tensor: TensorPlan) -> None:
        self._written = 0

    def end_tensor(self, tensor: TensorPlan) -> None:
        self.check_written(tensor)
        try:
            self._pad()
        except OSError as exc:
            raise disk_error(exc, self.path) from None

    def __exit__(self, *exc: object) -> None:
        try:
            self.writer.close()
        except OSError as error:
            if exc[0] is None:
                raise disk_error(error, self.path) from None


SAFETENSORS_DTYPE = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


class _Sized(Protocol):
    @property
    def n_bytes(self) -> int: ...


SizedT = TypeVar("SizedT", bound=_Sized)


def assign_shards(tensors: Sequence[SizedT], shard_bytes: int = SHARD_BYTES
                  ) -> list[list[SizedT]]:
    """Tensors in order, a new shard whenever the next one would pass `shard_bytes`."""
    shards: list[list[SizedT]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.n_bytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.n_bytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class SafetensorsSink(_StreamSink):
    """Write safetensors shards into a folder, the index when there is more than one."""

    def __init__(self, folder: Path, tensors: Sequence[TensorPlan],
                 shard_bytes: int = SHARD_BYTES) -> None:
        self.folder = self.where = folder
        self.shards = assign_shards(tensors, shard_bytes)
        self.names = shard_names(len(self.shards))
        self._shard_of = {t.name: i for i, shard in enumerate(self.shards) for t in shard}
        self._handle: BinaryIO | None = None
        self._open_index = -1
        self._written = 0
        self._writeback = Writeback()

    def __enter__(self) -> SafetensorsSink:
        return self

    def _header(self, shard: list[TensorPlan]) -> bytes:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in shard:
            header[tensor.name] = {"dtype": SAFETENSORS_DTYPE[tensor.out_type],
                                   "shape": list(tensor.shape),
                                   "data_offsets": [offset, offset + tensor.n_bytes]}
            offset += tensor.n_bytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        return struct.pack("<Q", len(raw)) + raw

    def begin_tensor(self, tensor: TensorPlan) -> None:
        index = self._shard_of[tensor.name]
        try:
            if index != self._open_index:
                if self._handle is not None:
                    self._handle.close()
                path = self.folder / self.names[index]
                self._handle = open(path, "wb")  # noqa: SIM115 - closed on the next shard/exit
                self._writeback = Writeback()
                self._open_index = index
                write_bytes(self._handle, self._header(self.shards[index]))
        except OSError as exc:
            raise disk_error(exc, self.folder) from None
        self._written = 0

    def end_tensor(self, tensor: TensorPlan) -> None:
        self.check_written(tensor)

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if exc[0] is None and len(self.shards) > 1:
            total = sum(t.n_bytes for shard in self.shards for t in shard)
            index = {"metadata": {"total_size": total},
                     "weight_map": {t.name: self.names[i]
                                    for i, shard in enumerate(self.shards) for t in shard}}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
