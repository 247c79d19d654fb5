"""Stream tensors into safetensors shards whose layout is fixed before the first byte.

Every tensor's name, dtype and shape is known from the plan, so each shard's header is written
when the shard is opened and tensor data follows in order; a shard is closed (and the next one
opened) at the size limit. The index names the shard of every tensor when there are several.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from app.core.convert.reading import TORCH_DTYPES
from app.core.convert.writing import assign_shards, disk_error, shard_names
from app.core.errors import JobError
from app.core.merge.plan import TensorAction

INDEX_FILE = "model.safetensors.index.json"


def encoded_view(tensor: torch.Tensor, dtype: str) -> memoryview:
    """The bytes of `tensor` in `dtype` (little-endian, on the CPU) without copying them when
    they are already so."""
    out = tensor.to(TORCH_DTYPES[dtype]).contiguous().reshape(-1).cpu()
    return memoryview(out.view(torch.uint8).numpy())


class ShardWriter:
    def __init__(self, folder: Path, actions: Sequence[TensorAction], shard_bytes: int) -> None:
        self.folder = folder
        self.shards = assign_shards(actions, shard_bytes)
        self.names = shard_names(len(self.shards))
        self._shard_of = {a.name: i for i, shard in enumerate(self.shards) for a in shard}
        self._open = -1
        self._handle: BinaryIO | None = None
        self._action: TensorAction | None = None
        self._action_bytes = 0
        self.bytes_written = 0

    def _header(self, shard: list[TensorAction]) -> bytes:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for action in shard:
            header[action.name] = {"dtype": action.dtype, "shape": list(action.shape),
                                   "data_offsets": [offset, offset + action.n_bytes]}
            offset += action.n_bytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw

    def write(self, action: TensorAction, data: bytes) -> None:
        self.begin(action)
        self.append(data)
        self.end()

    def begin(self, action: TensorAction) -> None:
        """Start `action`'s data: its bytes follow through `append`, then `end`."""
        index = self._shard_of[action.name]
        try:
            if index != self._open:
                self.close()
                self._handle = open(self.folder / self.names[index], "wb")  # noqa: SIM115
                self._open = index
                self._handle.write(self._header(self.shards[index]))
        except OSError as exc:
            raise disk_error(exc, self.folder) from None
        self._action = action
        self._action_bytes = 0

    def append(self, data: bytes | memoryview) -> None:
        assert self._handle is not None
        try:
            self._handle.write(data)
        except OSError as exc:
            raise disk_error(exc, self.folder) from None
        self._action_bytes += memoryview(data).nbytes

    def end(self) -> None:
        action = self._action
        assert action is not None
        if self._action_bytes != action.n_bytes:
            raise JobError(f"computed {self._action_bytes} bytes for {action.name}, planned "
                           f"{action.n_bytes}", path=self.folder)
        self.bytes_written += self._action_bytes
        self._action = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> None:
        self.close()
        if len(self.shards) > 1:
            total = sum(a.n_bytes for shard in self.shards for a in shard)
            index = {"metadata": {"total_size": total},
                     "weight_map": {a.name: self.names[i]
                                    for i, shard in enumerate(self.shards) for a in shard}}
            try:
                (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
            except OSError as exc:
                raise disk_error(exc, self.folder) from None
