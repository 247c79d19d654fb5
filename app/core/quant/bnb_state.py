"""What a bitsandbytes checkpoint says about each quantized weight, read without torch (the
planner runs where torch is not imported): the 4-bit quant state JSON and the companion names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from app.core.errors import FormatError

Bnb4Kind = Literal["nf4", "fp4"]
BNB4_KINDS: tuple[Bnb4Kind, ...] = ("nf4", "fp4")
STATE_PREFIX = "quant_state.bitsandbytes__"
# Companion tensors of a 4-bit weight `W`: `W.absmax`, `W.quant_map`, with double quantization
# `W.nested_absmax` and `W.nested_quant_map`, and the JSON state `W.quant_state.bitsandbytes__K`.
BNB4_COMPANIONS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
# An 8-bit weight `M.weight` has the scales `M.SCB` and the layout flag `M.weight_format`.
INT8_COMPANIONS = ("SCB", "weight_format")
# bitsandbytes' block sizes (dequantize_4bit refuses others).
BLOCK_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# `weight_format` 0 is the row-major layout every saved checkpoint uses; the others were GPU
# tile layouts of old bitsandbytes versions.
ROW_MAJOR = 0


@dataclass(frozen=True)
class Bnb4State:
    """What `W.quant_state.bitsandbytes__nf4|fp4` says about a 4-bit weight."""

    quant_type: Bnb4Kind
    blocksize: int
    dtype: str  # the dtype bitsandbytes dequantizes to (float32, float16 or bfloat16)
    shape: tuple[int, ...]  # the logical (unpacked) shape
    nested_blocksize: int | None = None
    nested_offset: float | None = None

    @property
    def nested(self) -> bool:
        return self.nested_blocksize is not None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_elements // self.blocksize)

    @property
    def packed_bytes(self) -> int:
        return -(-self.n_elements // 2)


def parse_quant_state(raw: bytes, *, tensor: str, kind: str | None = None) -> Bnb4State:
    """Parse the JSON bytes of a 4-bit quant state; `kind` is the `__nf4`/`__fp4` key suffix."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"unreadable bitsandbytes quant state ({exc})", tensor=tensor,
                          hint="the checkpoint is damaged; save it again") from None
    if not isinstance(data, dict):
        raise FormatError("bitsandbytes quant state is not a JSON object", tensor=tensor)
    quant_type = data.get("quant_type", kind)
    if quant_type not in BNB4_KINDS:
        raise FormatError(f"unknown bitsandbytes quant_type {quant_type!r} (known: nf4, fp4)",
                          tensor=tensor)
    if kind is not None and kind != quant_type:
        raise FormatError(f"quant state is stored as {kind} but says quant_type {quant_type}",
                          tensor=tensor)
    blocksize = data.get("blocksize")
    if blocksize not in BLOCK_SIZES:
        raise FormatError(f"bitsandbytes blocksize {blocksize!r} is not one of "
                          f"{', '.join(map(str, BLOCK_SIZES))}", tensor=tensor)
    dtype = data.get("dtype", "float32")
    if dtype not in FLOAT_DTYPES:
        raise FormatError(f"bitsandbytes dtype {dtype!r} is not float32, float16 or bfloat16",
                          tensor=tensor)
    shape = data.get("shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise FormatError(f"bitsandbytes quant state has shape {shape!r}", tensor=tensor)
    nested_blocksize = data.get("nested_blocksize")
    nested_offset = data.get("nested_offset")
    if (nested_blocksize is None) != (nested_offset is None):
        raise FormatError("bitsandbytes quant state has only half of the nested (double "
                          "quantization) fields", tensor=tensor)
    if nested_blocksize is not None and (not isinstance(nested_blocksize, int)
                                         or nested_blocksize <= 0
                                         or not isinstance(nested_offset, (int, float))):
        raise FormatError(f"bitsandbytes nested blocksize {nested_blocksize!r} / offset "
                          f"{nested_offset!r} are not numbers", tensor=tensor)
    return Bnb4State(quant_type, blocksize, dtype, tuple(shape), nested_blocksize,
                     None if nested_offset is None else float(nested_offset))


def state_key(weight: str, tensors: Mapping[str, object]) -> tuple[str, str] | None:
    """(key, nf4|fp4) of the quant state stored beside `weight`, or None."""
    for kind in BNB4_KINDS:
        key = f"{weight}.{STATE_PREFIX}{kind}"
        if key in tensors:
            return key, kind
    for key in tensors:
        if key.startswith(f"{weight}.{STATE_PREFIX}"):
            kind = key.removeprefix(f"{weight}.{STATE_PREFIX}")
            raise FormatError(f"unknown bitsandbytes quant_type {kind!r} (known: nf4, fp4)",
                              tensor=weight)
    return None


def int8_module(weight: str) -> str:
    """`M.weight` → `M`, under which bitsandbytes stores `M.SCB` and `M.weight_format`."""
    return weight.removesuffix(".weight")
