"""How a conversion is cut into chunks, and the memory that takes.

The job holds one chunk of rows at a time (plus the next one, read ahead): its raw bytes, the
float32 values, a permuted copy for Q/K, the quantizer's temporaries and the encoded bytes.
The constants are measured by tests/bench/convert_bench.py and tests/bench/convert_peak.py
(peak RSS of real jobs in a subprocess), not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

if TYPE_CHECKING:
    from app.core.convert.plan import ConversionPlan, SourceSlice, TensorPlan

MIB = 1024 * 1024
# Elements per chunk: 4 Mi float32 values (16 MiB) keeps a 2-core CPU busy with little
# per-chunk overhead, and bounds the working set to ~100 MiB whatever the model size.
CHUNK_ELEMENTS = 4 * MIB
# RSS of the process before any tensor: Python, torch, gguf-py, numpy (measured: 221-240 MiB).
BASELINE_RAM = 250 * MIB
# Host RSS a CUDA context adds (driver, cuBLAS handles), and the VRAM it takes.
CUDA_CONTEXT_RAM = 400 * MIB
CUDA_CONTEXT_VRAM = 500 * MIB
# Temporaries of the quantizers per element, in bytes (measured peak minus the buffers below).
QUANT_TEMP_BYTES: dict[str, float] = {"F32": 0.0, "F16": 2.0, "BF16": 2.0}
DEFAULT_QUANT_TEMP = 16.0  # the block quants: abs, max, scaled, rounded values in float32
# Python objects for metadata (a 150k-token vocabulary as str objects and lists) per file byte.
METADATA_OVERHEAD = 4

SAFETENSORS_BYTES = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "F64": 8.0}


def element_bytes(dtype: str) -> float:
    """Bytes per element of a safetensors dtype or a GGML type."""
    if dtype in SAFETENSORS_BYTES:
        return SAFETENSORS_BYTES[dtype]
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[dtype]]
    return size / block


def row_alignment(tensor: TensorPlan, piece: SourceSlice) -> int:
    """Rows a chunk must hold whole: one head's rows when Q/K rows are (un)permuted."""
    if tensor.permute and tensor.n_head:
        return max(1, piece.n_rows // tensor.n_head)
    return 1


def rows_per_chunk(piece: SourceSlice, align: int, chunk_elements: int = CHUNK_ELEMENTS) -> int:
    rows = max(1, chunk_elements // max(piece.row_length, 1))
    if align > 1:
        rows = max(align, rows // align * align)
    return min(rows, piece.n_rows)


def chunk_elements_for(plan: ConversionPlan) -> int:
    return CHUNK_ELEMENTS


def _per_element(tensor: TensorPlan, piece: SourceSlice, to: str) -> float:
    source = element_bytes(piece.dtype)
    if tensor.copy:
        return 2 * source  # the chunk and the one read ahead
    out = element_bytes(tensor.out_type)
    temp = QUANT_TEMP_BYTES.get(tensor.out_type, DEFAULT_QUANT_TEMP) if to == "gguf" else out
    permute = 4.0 if tensor.permute else 0.0
    return 2 * source + 4.0 + permute + temp + out


def working_set(plan: ConversionPlan) -> tuple[int, int]:
    """(bytes on the compute device, raw bytes on the host) of the largest chunk."""
    compute = 0
    host = 0
    for tensor in plan.tensors:
        for piece in tensor.slices:
            rows = rows_per_chunk(piece, row_alignment(tensor, piece), plan.chunk_elements)
            elements = rows * piece.row_length
            compute = max(compute, int(elements * _per_element(tensor, piece, plan.to)))
            raw = 2 * element_bytes(piece.dtype) + element_bytes(tensor.out_type)
            host = max(host, int(elements * raw))
    return compute, host


@dataclass(frozen=True)
class Peak:
    ram: int
    vram: int


def estimate_peak(plan: ConversionPlan) -> Peak:
    compute, host = working_set(plan)
    metadata = plan.metadata_bytes * METADATA_OVERHEAD
    if plan.device == "cuda":
        return Peak(BASELINE_RAM + CUDA_CONTEXT_RAM + metadata + host,
                    CUDA_CONTEXT_VRAM + compute)
    return Peak(BASELINE_RAM + metadata + compute, 0)


def estimate_naive_peak(plan: ConversionPlan) -> int:
    """Load every input tensor, keep every output tensor until the file is written (what a
    converter without streaming does), plus the largest tensor as float32 while it is encoded."""
    largest = max((t.n_elements for t in plan.tensors), default=0)
    return (BASELINE_RAM + plan.metadata_bytes * METADATA_OVERHEAD + plan.input_bytes
            + plan.tensor_bytes + 4 * largest)
