"""Dispatch quantize/dequantize to the implementation of each type, a chunk of blocks at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from gguf import quants as gguf_quants

from app.core.errors import FormatError, UnsupportedError
from app.core.quant import floats, kquant_writers, kquants, legacy, weighted
from app.core.quant.readable import can_dequantize, gguf_py_dequantizes, has_fast_dequantizer
from app.core.quant.types import QuantType, can_quantize, get_type

__all__ = ["can_dequantize", "can_quantize", "dequantize", "has_fast_dequantizer", "quantize"]

Quantizer = Callable[[torch.Tensor], torch.Tensor]  # float [n_blocks, block] → uint8 blocks
# uint8 [n_blocks, type_size] → float32 [n_blocks, block], written into the second argument
Dequantizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Work on this many elements at a time: bounds the float32 temporaries of a large tensor to a
# few times 16 MiB instead of a few times the tensor, and keeps the working set in cache.
CHUNK_ELEMENTS = 1 << 22
# The K-quant searches make temporaries many times their input (Q6_K's 19 tries at once, the
# others a few [positions, sub-blocks] planes per try): give them smaller chunks.
_CHUNK_DIVISOR = {"Q6_K": 16, "Q2_K": 16, "Q3_K": 16, "Q4_K": 16, "Q5_K": 16}

QUANTIZERS: dict[str, Quantizer] = {
    "F32": floats.quantize_f32,
    "F16": floats.quantize_f16,
    "BF16": floats.quantize_bf16,
    "Q8_0": legacy.quantize_q8_0,
    "Q4_0": legacy.quantize_q4_0,
    "Q4_1": legacy.quantize_q4_1,
    "Q5_0": legacy.quantize_q5_0,
    "Q5_1": legacy.quantize_q5_1,
    "Q2_K": kquant_writers.quantize_q2_k,
    "Q3_K": kquant_writers.quantize_q3_k,
    "Q4_K": kquant_writers.quantize_q4_k,
    "Q5_K": kquant_writers.quantize_q5_k,
    "Q6_K": kquants.quantize_q6_k,
}
DEQUANTIZERS: dict[str, Dequantizer] = {
    "F32": floats.dequantize_f32,
    "F16": floats.dequantize_f16,
    "BF16": floats.dequantize_bf16,
    "Q8_0": legacy.dequantize_q8_0,
    "Q4_0": legacy.dequantize_q4_0,
    "Q4_1": legacy.dequantize_q4_1,
    "Q5_0": legacy.dequantize_q5_0,
    "Q5_1": legacy.dequantize_q5_1,
    "Q2_K": kquants.dequantize_q2_k,
    "Q3_K": kquants.dequantize_q3_k,
    "Q4_K": kquants.dequantize_q4_k,
    "Q5_K": kquants.dequantize_q5_k,
    "Q6_K": kquants.dequantize_q6_k,
    "Q8_K": kquants.dequantize_q8_k,
}


def quantize(weights: torch.Tensor, qtype: str | QuantType, *, tensor: str | None = None,
             importance: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize the last dimension of `weights` into GGML blocks; uint8 result, same device.

    `importance` (per-column weights from an importance matrix: [n] for a matrix, [n_mat, n]
    for a stacked expert tensor [n_mat, rows, n]) weights the searches of the types ggml has a
    weighted path for, as llama-quantize does; the other types ignore it.

    Raises BlockSizeError (an UnsupportedError) when the last dimension does not divide the
    type's block size; `fitting_type` says which type llama.cpp would use instead. NaN or
    infinite weights raise FormatError naming `tensor` (llama.cpp refuses such rows too).
    A tensor on the meta device gives an empty uint8 tensor of the right shape (it has no
    values to quantize).
    """
    spec = get_type(qtype)
    use_importance = importance is not None and spec.name in weighted.WEIGHTED_QUANTIZERS
    quantizer = QUANTIZERS.get(spec.name)
    if quantizer is None and not use_importance:
        raise UnsupportedError(f"Modelyard cannot write {spec.name} tensors yet", tensor=tensor,
                               hint=f"writable types: {', '.join(QUANTIZERS)}")
    if not weights.is_floating_point():
        raise UnsupportedError(f"cannot quantize a {weights.dtype} tensor", tensor=tensor)
    n_per_row = weights.shape[-1] if weights.dim() else 1
    row_bytes = spec.row_bytes(n_per_row, tensor=tensor)
    if weights.device.type == "meta":
        return torch.empty((*weights.shape[:-1], row_bytes), dtype=torch.uint8, device="meta")
    if use_importance:
        assert importance is not None
        blocks = weights.reshape(-1, spec.block_size)
        if not bool(torch.isfinite(blocks).all()):
            _refuse_non_finite(blocks.to(torch.float32), 0, spec, tensor)
        return weighted.quantize_weighted(weights, spec.name, importance, row_bytes,
                                          tensor=tensor)
    assert quantizer is not None
    blocks = weights.reshape(-1, spec.block_size)
    out = torch.empty((blocks.shape[0], spec.type_size), dtype=torch.uint8,
                      device=weights.device)
    step = max(1, CHUNK_ELEMENTS // (spec.block_size * _CHUNK_DIVISOR.get(spec.name, 1)))
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start:start + step].to(torch.float32)
        if spec.is_quantized and not _all_finite(chunk):
            _refuse_non_finite(chunk, start, spec, tensor)
        out[start:start + step] = quantizer(chunk)
    return out.reshape(*weights.shape[:-1], row_bytes)


def _all_finite(chunk: torch.Tensor) -> bool:
    """Whether every value is finite. A NaN or an infinity makes the sum non-finite, and a sum
    is several times cheaper than isfinite().all(); only a sum that overflows (or a real bad
    value) takes the full look."""
    return bool(torch.isfinite(chunk.sum())) or bool(torch.isfinite(chunk).all())


def _refuse_non_finite(chunk: torch.Tensor, start: int, spec: QuantType,
                       tensor: str | None) -> None:
    bad = (~torch.isfinite(chunk)).nonzero()[0]
    index = (start + int(bad[0])) * spec.block_size + int(bad[1])
    value = float(chunk[int(bad[0]), int(bad[1])])
    raise FormatError(f"the weights hold {value} at element {index}; a {spec.name} tensor "
                      "cannot store NaN or infinite values", tensor=tensor,
                      hint="the source model is damaged; re-download or re-export it")


def dequantize(raw: torch.Tensor, qtype: str | QuantType, shape: Sequence[int] | None = None,
               *, tensor: str | None = None) -> torch.Tensor:
    """Dequantize GGML blocks to float32 on the device of `raw`.

    `raw` is uint8. Without `shape`, its last dimension is the bytes of one row and the result
    has the same leading dimensions. With `shape` (torch order: the row is the last dimension)
    the bytes are checked against it and the result has that shape. A byte count that does not
    match raises FormatError.
    """
    spec = get_type(qtype)
    if raw.dtype != torch.uint8:
        raise TypeError(f"expected uint8 bytes, got {raw.dtype}")
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        n_per_row = shape[-1] if shape else 1
        n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        expected = n_rows * spec.row_bytes(n_per_row, tensor=tensor)
        if raw.numel() != expected:
            raise FormatError(f"{raw.numel()} bytes cannot hold a {spec.name} tensor of shape "
                              f"{list(shape)}, which needs {expected}", tensor=tensor,
                              hint="the file is truncated or its tensor table is corrupt")
        raw = raw.reshape(n_rows, -1)
    else:
        shape_bytes = raw.shape[-1] if raw.dim() else 1
        if shape_bytes % spec.type_size:
            raise FormatError(f"{shape_bytes} bytes per row is not a whole number of "
                              f"{spec.name} blocks of {spec.type_size} bytes", tensor=tensor,
                              hint="the file is truncated or its tensor table is corrupt")
        shape = (*raw.shape[:-1], shape_bytes // spec.type_size * spec.block_size)
    dequantizer = DEQUANTIZERS.get(spec.name)
    if dequantizer is None:
        return _dequantize_with_gguf_py(raw, spec, tensor).reshape(shape)
    blocks = raw.reshape(-1, spec.type_size)
    out = torch.empty((blocks.shape[0], spec.block_size), dtype=torch.float32,
                      device=raw.device)
    step = max(1, CHUNK_ELEMENTS // spec.block_size)
    for start in range(0, blocks.shape[0], step):
        dequantizer(blocks[start:start + step], out[start:start + step])
    return out.reshape(shape)


def _dequantize_with_gguf_py(raw: torch.Tensor, spec: QuantType,
                             tensor: str | None) -> torch.Tensor:
    # The slow path, for the types without a torch kernel here (IQ*, TQ*, MXFP4, ...): gguf-py's
    # numpy code on the CPU, then back to the device the bytes came from.
    if not gguf_py_dequantizes(spec):
        raise UnsupportedError(f"Modelyard cannot read {spec.name} tensors", tensor=tensor)
    if raw.is_meta:  # shapes only: numpy cannot see a meta tensor, and needs not
        n_rows = raw.numel() // raw.shape[-1]
        return torch.empty((n_rows, raw.shape[-1] // spec.type_size * spec.block_size),
                           dtype=torch.float32, device=raw.device)
    rows = raw.detach().reshape(-1, raw.shape[-1]).cpu().numpy()
    values = gguf_quants.dequantize(rows, spec.ggml_type)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(raw.device)
