"""How a conversion is cut into chunks, and the memory that takes.

The job holds one chunk of rows at a time (plus the next one, read ahead): its raw bytes, the
float32 values, a permuted copy for Q/K, the quantizer's temporaries and the encoded bytes.
The constants are measured by tests/bench/convert_bench.py and tests/bench/convert_peak.py
(peak RSS of real jobs in a subprocess), not guessed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

if TYPE_CHECKING:
    from app.core.convert.plan import ConversionPlan, SourceSlice, TensorPlan

MIB = 1024 * 1024
# Elements per chunk. Float conversions: 2 Mi values (8 MiB as float32), little per-chunk
# overhead. Block quants (either side): their temporaries take ~32 bytes per element, so 1 Mi
# values; their speed per element is the same at 1 Mi as at 4 Mi (measured), and smaller
# temporaries leave less for the allocator to fragment.
CHUNK_ELEMENTS = 2 * MIB
BLOCK_CHUNK_ELEMENTS = 1 * MIB
# RSS of the process before any tensor: Python, torch, gguf-py, numpy (measured: 221-240 MiB),
# plus what streaming itself holds whatever the chunk (the read-ahead thread's malloc arena,
# torch's thread pool, file buffers): calibrated with tests/bench/convert_peak.py.
BASELINE_RAM = 240 * MIB
STREAMING_OVERHEAD = 30 * MIB
# transformers, imported to write config.json and tokenizer.json (GGUF → HF) or to load the
# HF tokenizer (HF → GGUF).
TRANSFORMERS_RAM = 100 * MIB
# Host RSS a CUDA context adds (driver, cuBLAS handles), and the VRAM it takes.
CUDA_CONTEXT_RAM = 400 * MIB
CUDA_CONTEXT_VRAM = 500 * MIB
# Temporaries per element while a chunk is encoded, in bytes, with what the allocator keeps
# between chunks (measured peak minus the buffers below, two workers). Float outputs encode
# fast enough that finished chunks queue for the writer; the block quantizers work through a
# chunk in small slices of their own, so their temporaries hardly show (tests/bench/
# convert_peak.py: Q8_0, Q6_K, Q5_x and Q4_x all peak within 15 MiB of each other).
QUANT_TEMP_BYTES: dict[str, float] = {"F32": 16.0, "F16": 28.0, "BF16": 28.0}
DEFAULT_QUANT_TEMP = 2.0
# Python objects for metadata (a 150k-token vocabulary as str objects and lists) per file byte.
METADATA_OVERHEAD = 4

SAFETENSORS_BYTES = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "F64": 8.0}
# bitsandbytes weights (without their scales, which are read a chunk's worth at a time).
BNB_BYTES = {"NF4": 0.5, "FP4": 0.5, "INT8": 1.0}
# What decoding a bitsandbytes chunk holds at its peak, per element (quant/bnb.py): 4-bit,
# during the code-table lookup, the codes unpacked to a byte each, their int64 indices and the
# float32 values (1 + 8 + 4), plus the hole the two unpacked halves leave (measured 13.9 in all,
# tests/core/test_convert_bnb_memory.py); 8-bit, the float32 product int8 · SCB and its copy
# scaled by 1/127 (measured 8.0). Decoding ends before encoding starts, so a chunk needs the
# larger of the two phases, not both.
BNB_DECODE_PEAK = {"NF4": 14.0, "FP4": 14.0, "INT8": 8.0}


def element_bytes(dtype: str) -> float:
    """Bytes per element of a safetensors dtype or a GGML type."""
    if dtype in SAFETENSORS_BYTES:
        return SAFETENSORS_BYTES[dtype]
    if dtype in BNB_BYTES:
        return BNB_BYTES[dtype]
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[dtype]]
    return size / block


def head_rows(tensor: TensorPlan, piece: SourceSlice) -> int:
    """Rows of one attention head, when Q/K rows are (un)permuted (else 1)."""
    if tensor.permute and tensor.n_head:
        return max(1, piece.n_rows // tensor.n_head)
    return 1


def row_alignment(tensor: TensorPlan, piece: SourceSlice) -> int:
    """Rows a chunk must start on: one head's rows when Q/K rows are (un)permuted; for a
    bitsandbytes 4-bit weight, also whole blocks of its scales."""
    align = head_rows(tensor, piece)
    if piece.bnb is not None and piece.bnb.state is not None:
        blocksize = piece.bnb.state.blocksize
        align = math.lcm(align, blocksize // math.gcd(piece.row_length, blocksize))
    return align


# Threads that read and encode chunks in parallel (each with single-threaded torch ops).
MAX_WORKERS = 4


def compute_workers(plan: ConversionPlan) -> int:
    if plan.device.startswith("cuda"):
        return 1  # the GPU is the parallel part; one host thread feeds it
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def is_block_type(dtype: str) -> bool:
    if dtype in SAFETENSORS_BYTES:
        return False
    if dtype in BNB_BYTES:
        return True
    return GGML_QUANT_SIZES[GGMLQuantizationType[dtype]][0] > 1


def chunk_elements(tensor: TensorPlan, piece: SourceSlice) -> int:
    if tensor.copy:
        return CHUNK_ELEMENTS
    if is_block_type(tensor.out_type) or is_block_type(piece.dtype):
        return BLOCK_CHUNK_ELEMENTS
    return CHUNK_ELEMENTS


def rows_per_chunk(piece: SourceSlice, align: int, elements: int = CHUNK_ELEMENTS) -> int:
    rows = max(1, elements // max(piece.row_length, 1))
    if align > 1:
        rows = max(align, rows // align * align)
    return min(rows, piece.n_rows)


def _per_element(tensor: TensorPlan, piece: SourceSlice, to: str) -> float:
    source = element_bytes(piece.dtype)
    if tensor.copy:
        return 2 * source  # the chunk and the one queued behind it
    out = element_bytes(tensor.out_type)
    temp = QUANT_TEMP_BYTES.get(tensor.out_type, DEFAULT_QUANT_TEMP)
    permute = 4.0 if tensor.permute else 0.0
    encode = 4.0 + permute + temp + out
    if piece.bnb is not None:
        return 2 * source + max(BNB_DECODE_PEAK[piece.dtype], encode)
    return 2 * source + encode


def working_set(plan: ConversionPlan) -> tuple[int, int]:
    """(bytes on the compute device, raw bytes on the host) of the largest chunk."""
    compute = 0
    host = 0
    for tensor in plan.tensors:
        for piece in tensor.slices:
            rows = rows_per_chunk(piece, row_alignment(tensor, piece),
                                  chunk_elements(tensor, piece))
            elements = rows * piece.row_length
            compute = max(compute, int(elements * _per_element(tensor, piece, plan.to)))
            raw = 2 * element_bytes(piece.dtype) + element_bytes(tensor.out_type)
            host = max(host, int(elements * raw))
    return compute, host


@dataclass(frozen=True)
class Peak:
    ram: int
    vram: int


def _fixed(plan: ConversionPlan) -> int:
    fixed = BASELINE_RAM + STREAMING_OVERHEAD + plan.metadata_bytes * METADATA_OVERHEAD
    if plan.loads_transformers:
        fixed += TRANSFORMERS_RAM
    return fixed


def estimate_peak(plan: ConversionPlan) -> Peak:
    compute, host = working_set(plan)
    compute *= compute_workers(plan)
    fixed = _fixed(plan)
    if plan.device.startswith("cuda"):
        return Peak(fixed + CUDA_CONTEXT_RAM + host, CUDA_CONTEXT_VRAM + compute)
    return Peak(fixed + compute, 0)


def estimate_naive_peak(plan: ConversionPlan) -> int:
    """Load every input tensor, keep every output tensor until the file is written (what a
    converter without streaming does), and encode each tensor whole."""
    whole = 0
    for tensor in plan.tensors:
        for piece in tensor.slices:
            whole = max(whole, int(tensor.n_elements * _per_element(tensor, piece, plan.to)))
    return _fixed(plan) + plan.input_bytes + plan.tensor_bytes + whole
