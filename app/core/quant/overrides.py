"""Per-tensor type choices a user makes on top of a target, as llama-quantize takes them:
`--tensor-type PATTERN=TYPE` (repeatable; the first pattern found anywhere in a tensor's name
wins), `--output-tensor-type TYPE` and `--token-embedding-type TYPE`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.core.errors import OptionError, OptionFact
from app.core.quant.types import WRITABLE_TYPES, QuantType, get_type

# Writable types in the order llama-quantize's help lists its own, for messages.
_TYPE_ORDER = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1",
               "Q4_0", "Q3_K", "Q2_K")


def valid_override_types() -> list[str]:
    return [name for name in _TYPE_ORDER if name in WRITABLE_TYPES]


def parse_override_type(value: str, option: str) -> QuantType:
    """A type name as llama-quantize's parse_ggml_type takes it (any case); only types
    Modelyard can write. `option` names the request's field the value came from
    (`tensor_types`, ...)."""
    name = str(value).strip().upper()
    if name not in WRITABLE_TYPES:
        raise OptionError(f"unknown or unwritable tensor type {value!r}",
                          hint=f"valid types: {', '.join(valid_override_types())}",
                          option=OptionFact(option))
    return get_type(name)


@dataclass(frozen=True)
class TensorTypeRule:
    pattern: str  # lower-cased, as llama-quantize lower-cases it
    type: QuantType

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def parse_tensor_type(option: str) -> TensorTypeRule:
    """`PATTERN=TYPE` → a rule. The pattern is a regular expression searched for in each
    tensor's GGUF name (std::regex_search in llama-quantize)."""
    pattern, sep, type_name = str(option).partition("=")
    if not sep or not pattern or not type_name:
        raise OptionError(f"per-tensor type {option!r} is not PATTERN=TYPE",
                          option=OptionFact("tensor_types"),
                          hint="e.g. attn_v=Q8_0 or 'blk\\.[0-3]\\.ffn_down=Q6_K'; valid "
                               f"types: {', '.join(valid_override_types())}")
    pattern = pattern.lower()
    try:
        re.compile(pattern)
    except re.error as exc:
        raise OptionError(f"per-tensor type {option!r}: {pattern!r} is not a valid regular "
                          f"expression ({exc})", option=OptionFact("tensor_types")) from None
    return TensorTypeRule(pattern, parse_override_type(type_name, "tensor_types"))


@dataclass(frozen=True)
class TypeOverrides:
    """What the user chose per tensor; empty by default (the target's own mix)."""

    tensor_types: tuple[TensorTypeRule, ...] = ()
    output: QuantType | None = None
    token_embedding: QuantType | None = None

    @classmethod
    def parse(cls, tensor_types: list[str] | tuple[str, ...] = (), output: str | None = None,
              token_embedding: str | None = None) -> TypeOverrides:
        return cls(tuple(parse_tensor_type(t) for t in tensor_types),
                   parse_override_type(output, "output_tensor_type") if output else None,
                   parse_override_type(token_embedding, "token_embedding_type")
                   if token_embedding else None)

    def __bool__(self) -> bool:
        return bool(self.tensor_types or self.output or self.token_embedding)

    def matching_rule(self, name: str) -> TensorTypeRule | None:
        return next((rule for rule in self.tensor_types if rule.matches(name)), None)

    def direct_type(self, name: str, is_token_embd: bool,
                    is_output: bool) -> QuantType | None:
        """llama_tensor_get_type()'s first checks: the embedding and output types are given
        to those tensors outright (no fallback, whatever the target). A --tensor-type pattern
        that names per_layer_token_embd takes precedence over the embedding type."""
        if self.token_embedding is not None and is_token_embd:
            if not (name == "per_layer_token_embd.weight" and self.matching_rule(name)):
                return self.token_embedding
        if self.output is not None and is_output:
            return self.output
        return None

    def describe(self) -> list[str]:
        """One line per choice, for logs and the dry run."""
        lines = [f"tensors matching {r.pattern!r}: {r.type.name}" for r in self.tensor_types]
        if self.output is not None:
            lines.append(f"output tensor: {self.output.name}")
        if self.token_embedding is not None:
            lines.append(f"token embeddings: {self.token_embedding.name}")
        return lines
