"""The table of GGML tensor types: block geometry, bits per weight, and fallbacks for rows that do
not divide a type's block size (the order llama.cpp's `tensor_type_fallback` uses)."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from app.core.errors import OptionError, UnsupportedError

# Types with one element per "block": ggml_is_quantized() is false for them.
_PLAIN_TYPES = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})
# The types codec.QUANTIZERS writes (a test keeps the two equal). Kept here so that the target
# table and the planner answer "can Modelyard write this?" without importing torch.
WRITABLE_TYPES = frozenset({"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                            "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_type: GGMLQuantizationType
    block_size: int  # elements per block
    type_size: int  # bytes per block

    @property
    def is_quantized(self) -> bool:
        """A block type, as ggml_is_quantized() says (F32/F16/BF16 and integers are not)."""
        return self.name not in _PLAIN_TYPES

    def fits_row(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0

    def row_bytes(self, n_per_row: int, *, tensor: str | None = None) -> int:
        if not self.fits_row(n_per_row):
            raise BlockSizeError(self, n_per_row, tensor=tensor)
        return n_per_row // self.block_size * self.type_size


TYPES: dict[str, QuantType] = {
    t.name: QuantType(t.name, t, *GGML_QUANT_SIZES[t]) for t in GGML_QUANT_SIZES
}


def get_type(name: str | GGMLQuantizationType | QuantType) -> QuantType:
    if isinstance(name, QuantType):
        return name
    key = name.name if isinstance(name, GGMLQuantizationType) else str(name).upper()
    try:
        return TYPES[key]
    except KeyError:
        raise OptionError(f"unknown tensor type {name!r}",
                          hint=f"known types: {', '.join(sorted(TYPES))}") from None


def can_quantize(qtype: str | GGMLQuantizationType | QuantType) -> bool:
    """Whether Modelyard can write tensors of this type."""
    return get_type(qtype).name in WRITABLE_TYPES


class BlockSizeError(UnsupportedError):
    """A tensor's rows do not divide the block size of the type asked for."""

    def __init__(self, qtype: QuantType, n_per_row: int, *, tensor: str | None = None) -> None:
        self.qtype = qtype
        self.n_per_row = n_per_row
        try:
            hint = f"a fitting type is {fitting_type(qtype, n_per_row).chosen.name}"
        except UnsupportedError:
            hint = "use F16 or F32 for this tensor"
        super().__init__(f"row length {n_per_row} is not a multiple of the {qtype.name} block "
                         f"size {qtype.block_size}", tensor=tensor, hint=hint)


# llama.cpp's tensor_type_fallback(): 256-element types step down to a 32-element type of
# similar or better quality; when even that does not fit, F16.
_FALLBACKS: dict[str, str] = {
    **dict.fromkeys(("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                     "IQ4_XS"), "IQ4_NL"),
    **dict.fromkeys(("Q2_K", "Q3_K", "TQ1_0", "TQ2_0"), "Q4_0"),
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}


@dataclass(frozen=True)
class TypeChoice:
    """The type a tensor gets: `requested`, or a fallback when its rows do not fit."""

    requested: QuantType
    chosen: QuantType
    reason: str | None = None  # why `chosen` differs from `requested`, for the job's log

    @property
    def fell_back(self) -> bool:
        return self.chosen != self.requested


def fitting_type(qtype: str | QuantType, n_per_row: int,
                 tensor: str | None = None) -> TypeChoice:
    """The type llama.cpp writes for a row of `n_per_row` elements when `qtype` is asked for."""
    spec = get_type(qtype)
    if spec.fits_row(n_per_row):
        return TypeChoice(spec, spec)
    fallback_name = _FALLBACKS.get(spec.name)
    if fallback_name is not None:
        fallback = TYPES[fallback_name]
    elif spec.block_size <= 32:
        fallback = spec  # already a small-block type: only F16 is left (below)
    else:
        raise UnsupportedError(f"row length {n_per_row} does not fit {spec.name} and no "
                               "fallback type is defined for it", tensor=tensor,
                               hint="choose another type for this tensor")
    where = f"{tensor}: " if tensor else ""
    reason = (f"{where}row length {n_per_row} is not a multiple of {spec.block_size} "
              f"(required for {spec.name})")
    if not fallback.fits_row(n_per_row):
        fallback = TYPES["F16"]
        reason += ", and no block type fits"
    return TypeChoice(spec, fallback, f"{reason}; falling back to {fallback.name}")
