"""Run a plan: for each output tensor, each source slice in row chunks: read, decode to float32,
(un)permute, encode, write. One chunk in memory at a time (and the next one being read)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from app.core.convert.importance import quantize_with_importance
from app.core.convert.plan import ConversionPlan, SourceSlice, TensorPlan
from app.core.convert.reading import TORCH_DTYPES, SourceReader, decode_bnb_rows, decode_rows
from app.core.convert.sizing import (
    chunk_elements,
    compute_workers,
    head_rows,
    row_alignment,
    rows_per_chunk,
)
from app.core.cuda import torch_device
from app.core.heap import keep_freed_buffers
from app.core.jobs import Reporter, check_cancel
from app.core.quant import quantize


class Sink(Protocol):
    def begin_tensor(self, tensor: TensorPlan) -> None: ...

    def write(self, chunk: torch.Tensor) -> int: ...

    def end_tensor(self, tensor: TensorPlan) -> None: ...


@dataclass(frozen=True)
class Chunk:
    piece: SourceSlice
    first_row: int
    n_rows: int

    @property
    def offset(self) -> int:
        return self.piece.offset + self.first_row * self.piece.row_bytes

    @property
    def n_bytes(self) -> int:
        return self.n_rows * self.piece.row_bytes


def chunks_of(tensor: TensorPlan) -> Iterator[Chunk]:
    for piece in tensor.slices:
        step = rows_per_chunk(piece, row_alignment(tensor, piece), chunk_elements(tensor, piece))
        for first in range(0, piece.n_rows, step):
            yield Chunk(piece, first, min(step, piece.n_rows - first))


def permute_rows(values: torch.Tensor, n_heads: int, inverse: bool) -> torch.Tensor:
    """llama.cpp's Q/K permutation (convert_hf_to_gguf.py LlamaModel.permute) on whole heads:
    each head's rows [first half, second half] become interleaved pairs, or back."""
    rows, cols = values.shape
    half = rows // n_heads // 2
    if inverse:
        shaped = values.reshape(n_heads, half, 2, cols)
    else:
        shaped = values.reshape(n_heads, 2, half, cols)
    return shaped.swapaxes(1, 2).reshape(rows, cols)


# Float types a 16-bit source converts to directly: widening to float32 first is exact, so one
# conversion gives the same bytes as two, in one pass instead of two.
_DIRECT_FLOATS = frozenset({"F32", "F16", "BF16"})
_SIXTEEN_BIT = frozenset({"F16", "BF16"})


def encode(values: torch.Tensor, out_type: str, to: str,
           tensor: str | None = None) -> torch.Tensor:
    if to == "hf" or (out_type in _DIRECT_FLOATS and values.dtype != torch.float32):
        return values.to(TORCH_DTYPES[out_type]).contiguous().view(torch.uint8)
    return quantize(values, out_type, tensor=tensor)


def _decoded(raw: torch.Tensor, piece: SourceSlice, n_rows: int, out_type: str) -> torch.Tensor:
    """The chunk's values: float32, or left in their 16-bit type when a float output type
    takes them as they are."""
    if piece.dtype in _SIXTEEN_BIT and out_type in _DIRECT_FLOATS:
        return raw.view(TORCH_DTYPES[piece.dtype]).reshape(n_rows, piece.row_length)
    return decode_rows(raw, piece.dtype, n_rows, piece.row_length)


def _source(reader: SourceReader, chunk: Chunk) -> torch.Tensor:
    piece = chunk.piece
    if piece.values is not None:
        return torch.tensor(piece.values, dtype=torch.float32).view(torch.uint8)
    assert piece.file is not None
    return reader.read(piece.file, chunk.offset, chunk.n_bytes, piece.tensor)


def _process(reader: SourceReader, raw: torch.Tensor, chunk: Chunk, tensor: TensorPlan,
             plan: ConversionPlan, device: torch.device) -> torch.Tensor:
    if tensor.copy:
        return raw
    piece = chunk.piece
    on_device = raw.to(device, non_blocking=True)
    weights = plan.importance.weights_for(tensor) if plan.importance is not None else None
    if piece.bnb is not None:
        values = decode_bnb_rows(reader, piece, chunk.first_row, chunk.n_rows, on_device)
    elif weights is None:
        values = _decoded(on_device, piece, chunk.n_rows, tensor.out_type)
    else:
        values = decode_rows(on_device, piece.dtype, chunk.n_rows, piece.row_length)
    if tensor.permute:
        heads = chunk.n_rows // head_rows(tensor, piece)
        values = permute_rows(values, heads, inverse=tensor.permute == "unqk")
    if weights is not None:
        return quantize_with_importance(values, tensor, piece, chunk.first_row, weights).cpu()
    return encode(values, tensor.out_type, plan.to, tensor.name).cpu()


def _produce(reader: SourceReader, tensor: TensorPlan, chunk: Chunk, plan: ConversionPlan,
             device: torch.device) -> torch.Tensor:
    return _process(reader, _source(reader, chunk), chunk, tensor, plan, device)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Each worker runs single-threaded torch ops: workers on separate chunks scale without
    OpenMP barriers, which on a busy 2-core machine made every op ~10x slower (measured)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_plan(plan: ConversionPlan, sink: Sink, reporter: Reporter) -> int:
    """Stream every tensor of `plan` into `sink`; return the tensor bytes written.

    `compute_workers` threads read and encode chunks a few ahead; this thread writes them in
    order, reports progress and checks for cancel between chunks.
    """
    keep_freed_buffers()
    device = torch_device(plan.device)
    workers = compute_workers(plan)
    total, done = plan.tensor_bytes, 0
    work = iter([(tensor, chunk) for tensor in plan.tensors for chunk in chunks_of(tensor)])
    pending: deque[tuple[TensorPlan, Future[torch.Tensor]]] = deque()
    current: TensorPlan | None = None
    with torch_threads(1 if plan.device == "cpu" else None), SourceReader() as reader, \
            ThreadPoolExecutor(workers, "convert") as pool:

        def submit_next() -> None:
            item = next(work, None)
            if item is not None:
                tensor, chunk = item
                pending.append((tensor, pool.submit(_produce, reader, tensor, chunk, plan,
                                                    device)))

        try:
            for _ in range(workers + 1):
                submit_next()
            while pending:
                check_cancel(reporter)
                tensor, future = pending.popleft()
                out = future.result()
                submit_next()
                if tensor is not current:
                    if current is not None:
                        sink.end_tensor(current)
                    sink.begin_tensor(tensor)
                    current = tensor
                done += sink.write(out)
                del out
                reporter.progress(done, total, tensor.name)
            if current is not None:
                sink.end_tensor(current)
        finally:
            for _, future in pending:
                future.cancel()
    return done


def describe(plan: ConversionPlan) -> list[str]:
    """One log line per tensor decision worth reading."""
    lines = []
    for tensor in plan.tensors:
        sources = ", ".join(tensor.sources[:2]) + (" ..." if len(tensor.sources) > 2 else "")
        extra = "; ".join(x for x in (tensor.note, tensor.fallback) if x)
        lines.append(f"{tensor.name} ← {sources}: {tensor.slices[0].dtype} → {tensor.out_type} "
                     f"{list(tensor.shape)}{' (copied)' if tensor.copy else ''}"
                     f"{f' — {extra}' if extra else ''}")
    return lines

