"""The file types a user can ask for (F16, Q8_0, Q4_K_M, ...): one table, with llama.cpp's
file-type codes and its published quality figures."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from gguf import LlamaFileType

from app.core.errors import OptionError
from app.core.quant.types import QuantType, can_quantize, get_type


@dataclass(frozen=True)
class Target:
    name: str  # what the user types and what goes into file names: "Q4_K_M"
    file_type: LlamaFileType  # written as general.file_type
    default_type: QuantType  # llama_ftype_get_default_type(): most tensors get this
    # Perplexity increase llama.cpp's `llama-quantize --help` lists for this type (Llama-3-8B;
    # F16 and BF16 on Mistral-7B): a ranking of quality, lower is better.
    ppl_delta: float
    summary: str

    @property
    def is_mix(self) -> bool:
        """Whether llama.cpp's per-tensor rules apply (every quantized target, legacy included:
        their output tensor gets Q6_K); F32/F16/BF16 write every weight in one type."""
        return self.default_type.is_quantized

    @cached_property
    def possible_types(self) -> frozenset[str]:
        """Every type this target can give a weight of a llama-family model, fallbacks
        included (found by planning representative models)."""
        from app.core.quant.mixes import types_a_target_can_choose

        return types_a_target_can_choose(self)

    @property
    def writable(self) -> bool:
        """Whether Modelyard can write every tensor this target can choose, on any model."""
        from app.core.quant.mixes import types_a_plan_can_give

        # The superset answers at once when every type in it is writable; only otherwise are
        # representative models planned (every CLI command asks, while building its parser).
        if all(can_quantize(name) for name in types_a_plan_can_give(self)):
            return True
        return all(can_quantize(name) for name in self.possible_types)


def _target(name: str, file_type: LlamaFileType, default: str, ppl: float,
            summary: str) -> Target:
    return Target(name, file_type, get_type(default), ppl, summary)


FT = LlamaFileType
TARGETS: dict[str, Target] = {t.name: t for t in (
    _target("F32", FT.ALL_F32, "F32", 0.0, "32-bit float, no loss"),
    _target("F16", FT.MOSTLY_F16, "F16", 0.0020, "16-bit float"),
    _target("BF16", FT.MOSTLY_BF16, "BF16", -0.0050, "16-bit bfloat"),
    _target("Q8_0", FT.MOSTLY_Q8_0, "Q8_0", 0.0026, "8-bit, nearly lossless"),
    _target("Q6_K", FT.MOSTLY_Q6_K, "Q6_K", 0.0217, "6-bit K-quant"),
    _target("Q5_K_M", FT.MOSTLY_Q5_K_M, "Q5_K", 0.0569, "5-bit K-quant mix, medium"),
    _target("Q5_K_S", FT.MOSTLY_Q5_K_S, "Q5_K", 0.1049, "5-bit K-quant mix, small"),
    _target("Q5_1", FT.MOSTLY_Q5_1, "Q5_1", 0.1062, "5-bit legacy with offset"),
    _target("Q5_0", FT.MOSTLY_Q5_0, "Q5_0", 0.1316, "5-bit legacy"),
    _target("Q4_K_M", FT.MOSTLY_Q4_K_M, "Q4_K", 0.1754, "4-bit K-quant mix, medium"),
    _target("Q4_K_S", FT.MOSTLY_Q4_K_S, "Q4_K", 0.2689, "4-bit K-quant mix, small"),
    _target("Q4_1", FT.MOSTLY_Q4_1, "Q4_1", 0.4511, "4-bit legacy with offset"),
    _target("Q4_0", FT.MOSTLY_Q4_0, "Q4_0", 0.4685, "4-bit legacy"),
    _target("Q3_K_L", FT.MOSTLY_Q3_K_L, "Q3_K", 0.5562, "3-bit K-quant mix, large"),
    _target("Q3_K_M", FT.MOSTLY_Q3_K_M, "Q3_K", 0.6569, "3-bit K-quant mix, medium"),
    _target("Q3_K_S", FT.MOSTLY_Q3_K_S, "Q3_K", 1.6321, "3-bit K-quant mix, small"),
    _target("Q2_K", FT.MOSTLY_Q2_K, "Q2_K", 3.5199, "2-bit K-quant mix"),
)}
# llama-quantize accepts these names for the medium mixes.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def get_target(name: str | Target) -> Target:
    """The target called `name` (case-insensitive, llama-quantize's aliases accepted)."""
    if isinstance(name, Target):
        return name
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    try:
        return TARGETS[key]
    except KeyError:
        raise OptionError(f"unknown target type {name!r}",
                          hint=f"valid targets: {', '.join(TARGETS)}") from None


def writable_targets() -> list[Target]:
    """The targets Modelyard can write today, best quality first."""
    return [t for t in TARGETS.values() if t.writable]
