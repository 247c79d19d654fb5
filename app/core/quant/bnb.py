"""bitsandbytes checkpoints in plain torch: 4-bit NF4/FP4 (with double quantization) and 8-bit.

    state = parse_quant_state(raw_json_bytes, tensor="model.layers.0.mlp.up_proj.weight")
    absmax = dequantize_absmax(absmax_raw, state, nested_absmax, nested_quant_map)
    weights = dequantize_4bit(packed, absmax, state)         # state.shape, in state.dtype
    weights = dequantize_int8(int8_weight, scb)              # float32

The arithmetic is bitsandbytes' own (its CPU kernels, `bitsandbytes.functional.dequantize_4bit`
and `int8_vectorwise_dequant`), float32 throughout, so the values are bit-identical; bitsandbytes
itself is not needed. Every function returns tensors on the device of its input and never moves
one to the CPU.

A 4-bit weight is stored as packed bytes (two values per byte, the first in the high nibble)
over the flattened logical tensor, cut into blocks of `blocksize` values that share one absmax.
With double quantization the absmax values are themselves uint8 codes into `nested_quant_map`,
scaled per block of `nested_blocksize` by `nested_absmax`, plus `nested_offset`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from app.core.errors import FormatError
from app.core.quant.bnb_state import (
    BNB4_KINDS,
    ROW_MAJOR,
    STATE_PREFIX,
    Bnb4Kind,
    Bnb4State,
    int8_module,
    parse_quant_state,
    state_key,
)

__all__ = ["BNB4_KINDS", "STATE_PREFIX", "Bnb4State", "code_table", "dequantize_4bit",
           "dequantize_absmax", "dequantize_int8", "dequantize_weight", "packed_bytes",
           "parse_quant_state", "state_key"]
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# NF4: quantiles of the standard normal distribution (bitsandbytes' `get_4bit_type("nf4")`).
_NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
# FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, divided by its largest value.
# Code 8 (negative zero) decodes to +0.0, as bitsandbytes' vectorised CPU kernel writes it.
_FP4 = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
        0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0)
# 1/127 as bitsandbytes writes it: int8 weights are multiplied by this, not divided by 127.
INV_127 = 7.874015718698502e-3


def code_table(quant_type: Bnb4Kind, device: torch.device | str) -> torch.Tensor:
    """The 16 float32 values a 4-bit code stands for, as bitsandbytes computes them."""
    values = torch.tensor(_NF4 if quant_type == "nf4" else _FP4, dtype=torch.float32,
                          device=device)
    return values.div_(values.abs().max())


def dequantize_absmax(absmax: torch.Tensor, state: Bnb4State,
                      nested_absmax: torch.Tensor | None = None,
                      nested_quant_map: torch.Tensor | None = None, *,
                      first_block: int = 0, tensor: str | None = None) -> torch.Tensor:
    """The float32 scale of each block. With double quantization `absmax` holds uint8 codes:
    nested_quant_map[code] · nested_absmax[block of nested_blocksize] + nested_offset.

    `absmax` may be the part from block `first_block` on; `nested_absmax` is always whole."""
    if not state.nested:
        if absmax.dtype == torch.uint8:
            raise FormatError("absmax is stored as uint8 codes but the quant state has no "
                              "nested (double quantization) fields", tensor=tensor)
        values = absmax.reshape(-1).to(torch.float32)
    else:
        if nested_absmax is None or nested_quant_map is None:
            missing = "nested_absmax" if nested_absmax is None else "nested_quant_map"
            raise FormatError(f"double-quantized weight without its {missing} tensor",
                              tensor=tensor, hint="the checkpoint is incomplete")
        if absmax.dtype != torch.uint8:
            raise FormatError(f"double-quantized absmax stored as {absmax.dtype}, not uint8",
                              tensor=tensor)
        assert state.nested_blocksize is not None and state.nested_offset is not None
        codes = absmax.reshape(-1)
        need = -(-(first_block + codes.numel()) // state.nested_blocksize)
        if nested_absmax.numel() < need or nested_quant_map.numel() != 256:
            raise FormatError(f"nested_absmax has {nested_absmax.numel()} values for {need} "
                              f"blocks, nested_quant_map {nested_quant_map.numel()} of 256",
                              tensor=tensor)
        table = nested_quant_map.reshape(-1).to(torch.float32)
        scales = nested_absmax.reshape(-1).to(torch.float32)
        block_of = torch.arange(first_block, first_block + codes.numel(),
                                device=codes.device) // state.nested_blocksize
        values = table[codes.to(torch.int64)] * scales[block_of]
        offset = torch.tensor(state.nested_offset, dtype=torch.float32, device=codes.device)
        values = values + offset
    return values


def packed_bytes(packed: torch.Tensor) -> torch.Tensor:
    """The packed weight as flat bytes, whatever `bnb_4bit_quant_storage` dtype holds them."""
    flat = packed.contiguous().reshape(-1)
    return flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, state: Bnb4State, *,
                    first_element: int = 0, n_elements: int | None = None,
                    tensor: str | None = None) -> torch.Tensor:
    """Dequantize 4-bit values to `state.dtype`: code[nibble] · absmax[block], float32 math.

    `packed` holds the bytes of elements [first_element, first_element + n_elements) of the
    flattened weight (the whole weight by default; a part must start on an even element), and
    `absmax` the float32 scales (`dequantize_absmax`) of the blocks from the one holding
    `first_element` on. The result is flat for a part, `state.shape` for the whole weight.
    """
    whole = n_elements is None
    count = state.n_elements - first_element if n_elements is None else n_elements
    raw = packed_bytes(packed)
    if first_element % 2 or raw.numel() != -(-count // 2):
        raise FormatError(f"packed weight has {raw.numel()} bytes where {-(-count // 2)} hold "
                          f"{count} 4-bit values", tensor=tensor,
                          hint="the weight and its quant state disagree; the file is damaged")
    codes = torch.stack((raw >> 4, raw & 0xF), dim=1).reshape(-1)[:count]
    values = code_table(state.quant_type, raw.device)[codes.to(torch.int64)]
    first_block = first_element // state.blocksize
    last_block = (first_element + count - 1) // state.blocksize
    if absmax.numel() <= last_block - first_block:
        raise FormatError(f"absmax has {absmax.numel()} values where the weight needs "
                          f"{last_block - first_block + 1}", tensor=tensor,
                          hint="the checkpoint is damaged")
    if first_element % state.blocksize == 0 and count % state.blocksize == 0:
        # whole blocks (the usual case): one scale per row of a [blocks, blocksize] view
        values = (values.view(-1, state.blocksize)
                  * absmax[:count // state.blocksize, None]).reshape(-1)
    else:
        index = torch.arange(first_element, first_element + count, device=raw.device)
        values = values * absmax[index // state.blocksize - first_block]
    out = values.to(TORCH_DTYPES[state.dtype])
    return out.reshape(state.shape) if whole and first_element == 0 else out


def dequantize_int8(weight: torch.Tensor, scb: torch.Tensor, *,
                    tensor: str | None = None) -> torch.Tensor:
    """LLM.int8() rows to float32: int8 · SCB[row] · (1/127), bitsandbytes' exact expression."""
    if weight.dtype != torch.int8:
        raise FormatError(f"8-bit weight stored as {weight.dtype}, not int8", tensor=tensor)
    rows = weight.shape[0] if weight.dim() else 1
    if scb.numel() != rows:
        raise FormatError(f"SCB has {scb.numel()} scales for {rows} rows", tensor=tensor,
                          hint="the weight and its scales disagree; the file is damaged")
    return weight * scb.to(torch.float32).view(-1, *([1] * (weight.dim() - 1))) * INV_127


def dequantize_weight(weight: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Dequantize the bitsandbytes weight `weight` of a state dict (4-bit or 8-bit), on the
    device its tensors are on; FormatError naming it when a companion tensor is missing."""
    packed = tensors[weight]
    if packed.dtype == torch.int8:
        module = int8_module(weight)
        scb = tensors.get(f"{module}.SCB")
        if scb is None:
            raise FormatError("8-bit weight without its SCB scales", tensor=weight,
                              hint="the checkpoint is incomplete")
        layout = tensors.get(f"{module}.weight_format")
        if layout is not None and int(layout.reshape(-1)[0]) != ROW_MAJOR:
            raise FormatError(f"8-bit weight in tile layout {int(layout.reshape(-1)[0])}, "
                              "not row-major", tensor=weight)
        return dequantize_int8(packed, scb, tensor=weight)
    found = state_key(weight, tensors)
    if found is None:
        raise FormatError("4-bit weight without its quant_state", tensor=weight,
                          hint="the checkpoint is incomplete")
    key, kind = found
    state = parse_quant_state(packed_bytes(tensors[key]).cpu().numpy().tobytes(),
                              tensor=weight, kind=kind)
    absmax = tensors.get(f"{weight}.absmax")
    if absmax is None:
        raise FormatError("4-bit weight without its absmax", tensor=weight,
                          hint="the checkpoint is incomplete")
    scales = dequantize_absmax(absmax, state, tensors.get(f"{weight}.nested_absmax"),
                               tensors.get(f"{weight}.nested_quant_map"), tensor=weight)
    return dequantize_4bit(packed, scales, state, tensor=weight)
