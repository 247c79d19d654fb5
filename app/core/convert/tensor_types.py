"""Which GGML type each output tensor gets: the requested one, F32 where llama.cpp wants it,
or a fallback when a row does not divide the type's block size.

The chain of fallbacks is a table, so the K-quants (block 256) slot in beside the legacy types
(block 32) with no change to the code that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import MODEL_TENSOR, LlamaFileType

from app.core.errors import OptionError, UnsupportedError
from app.core.quant import can_quantize, get_type

# The GGUF types `modelyard convert --type` offers; those app.core.quant cannot write yet are
# refused with a clear message (see `writable_output_types`).
GGUF_OUTPUT_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
HF_OUTPUT_DTYPES: tuple[str, ...] = ("F16", "BF16", "F32")

# When a row does not divide a type's block size: the type llama.cpp's llama-quant.cpp falls
# back to (K-quants to legacy types of similar size), and legacy types to F16 as its converter does.
FALLBACK: dict[str, str] = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
    "Q4_0": "F16", "Q4_1": "F16", "Q5_0": "F16", "Q5_1": "F16", "Q8_0": "F16",
}

# Tensors llama.cpp keeps in F32 whatever the file type (convert_hf_to_gguf.py, llama-quant.cpp):
# 1-D tensors, norms, and the MoE routers.
F32_TENSORS: frozenset[MODEL_TENSOR] = frozenset({
    MODEL_TENSOR.FFN_GATE_INP, MODEL_TENSOR.FFN_GATE_INP_SHEXP, MODEL_TENSOR.POS_EMBD,
    MODEL_TENSOR.TOKEN_TYPES,
})


@dataclass(frozen=True)
class TypeChoice:
    type_name: str
    reason: str | None = None  # why it is not the requested type; None when it is


def writable_output_types() -> tuple[str, ...]:
    return tuple(t for t in GGUF_OUTPUT_TYPES if can_quantize(t))


def parse_output_type(name: str, to: str = "gguf") -> str:
    """Normalise a `--type` value; refuse unknown names and types Modelyard cannot write."""
    upper = str(name).strip().upper()
    if to == "hf":
        if upper not in HF_OUTPUT_DTYPES:
            raise OptionError(f"--to hf writes safetensors as {', '.join(HF_OUTPUT_DTYPES)}, "
                              f"not {name!r}")
        return upper
    spec = get_type(upper)  # raises OptionError with the known names
    if spec.name not in GGUF_OUTPUT_TYPES and spec.name not in FALLBACK:
        raise OptionError(f"cannot convert to {spec.name}",
                          hint=f"choose one of {', '.join(GGUF_OUTPUT_TYPES)}")
    if not can_quantize(spec.name):
        raise UnsupportedError(f"Modelyard cannot write {spec.name} tensors yet",
                               hint=f"writable now: {', '.join(writable_output_types())}")
    return spec.name


def file_type_of(type_name: str) -> LlamaFileType:
    """The `general.file_type` a file whose weights are mostly `type_name` declares."""
    if type_name == "F32":
        return LlamaFileType.ALL_F32
    return LlamaFileType[f"MOSTLY_{type_name}"]


def keeps_f32(gguf_name: str, kind: MODEL_TENSOR | None, n_dims: int) -> bool:
    """Whether llama.cpp expects this tensor in F32 whatever the requested type."""
    if n_dims <= 1 or gguf_name.endswith("_norm.weight"):
        return True
    if kind in F32_TENSORS:
        return True
    return not gguf_name.endswith(".weight")


def choose_type(requested: str, row_length: int) -> TypeChoice:
    """`requested`, or the first type down the fallback chain whose block divides the row."""
    current = requested
    reasons: list[str] = []
    while True:
        spec = get_type(current)
        if spec.fits_row(row_length) and can_quantize(current):
            reason = None if current == requested else "; ".join(reasons) + f", so {current}"
            return TypeChoice(current, reason)
        if not spec.fits_row(row_length):
            reasons.append(f"row length {row_length} is not a multiple of the {current} block "
                           f"size {spec.block_size}")
        else:
            reasons.append(f"Modelyard cannot write {current}")
        nxt = FALLBACK.get(current)
        if nxt is None:
            return TypeChoice("F32", "; ".join(reasons) + ", so F32")
        current = nxt
