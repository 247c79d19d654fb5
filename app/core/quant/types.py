"""The table of GGML tensor types: block geometry, bits per weight, what Modelyard can write."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from app.core.errors import OptionError


@dataclass(frozen=True)
class QuantType:
    name: str
    ggml_type: GGMLQuantizationType
    block_size: int  # elements per block
    type_size: int  # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n_per_row: int) -> int:
        if n_per_row % self.block_size:
            raise ValueError(f"row length {n_per_row} is not a multiple of the {self.name} "
                             f"block size {self.block_size}")
        return n_per_row // self.block_size * self.type_size

    def fits_row(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0


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
