"""bitsandbytes weights of an HF checkpoint as typed inputs: each quantized weight with its
logical shape and its companion tensors, read from the safetensors headers (and the few bytes
of each 4-bit quant state). Every quantized weight is found, whatever its module."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.core.convert.plan import BnbEncoding, SourceSlice, StoredTensor
from app.core.errors import FormatError, UnsupportedError
from app.core.formats.safetensors_header import (
    SafetensorsEntry,
    SafetensorsHeader,
    read_entry_bytes,
)
from app.core.quant.bnb_state import (
    BNB4_COMPANIONS,
    ROW_MAJOR,
    STATE_PREFIX,
    int8_module,
    parse_quant_state,
    state_key,
)

Located = tuple[SafetensorsEntry, SafetensorsHeader]


@dataclass(frozen=True)
class BnbWeight:
    name: str
    shape: tuple[int, ...]  # logical, row-major
    piece: SourceSlice  # the whole weight as rows, with its companions


@dataclass(frozen=True)
class BnbInputs:
    weights: dict[str, BnbWeight]
    companions: frozenset[str]  # names that only carry quantization state

    @property
    def modules(self) -> list[str]:
        """The modules touched, layer numbers folded: `model.layers.*.mlp`, ..."""
        import re

        found: list[str] = []
        for name in self.weights:
            module = re.sub(r"\.\d+\.", ".*.", name.rsplit(".", 2)[0] + ".")[:-1]
            if module not in found:
                found.append(module)
        return found


def _stored(item: Located) -> StoredTensor:
    entry, header = item
    return StoredTensor(header.path, entry.name, entry.begin, entry.n_bytes, entry.dtype)


def _need(tensors: Mapping[str, Located], name: str, weight: str, what: str,
          path: Path) -> Located:
    found = tensors.get(name)
    if found is None:
        raise FormatError(f"{what} without its {name.rsplit('.', 1)[-1]}", path=path,
                          tensor=weight, hint="the checkpoint is incomplete; download it again")
    return found


def _rows(shape: tuple[int, ...], even: bool) -> tuple[int, int]:
    """(rows, row length) of a weight; 4-bit rows must hold whole bytes (an even length),
    else the weight is one row."""
    length = shape[-1]
    rows = 1
    for dim in shape[:-1]:
        rows *= dim
    if even and length % 2:
        return 1, rows * length
    return rows, length


def _four_bit(weight: str, state_name: str, kind: str,
              tensors: Mapping[str, Located]) -> BnbWeight:
    state_entry, state_header = tensors[state_name]
    if weight not in tensors:
        raise FormatError("a quant state for a weight that is not stored", tensor=weight,
                          path=state_header.path, hint="the checkpoint is incomplete")
    entry, header = tensors[weight]
    state = parse_quant_state(read_entry_bytes(state_header, state_entry, limit=64 * 1024),
                              tensor=weight, kind=kind)
    path = header.path
    absmax = _need(tensors, f"{weight}.absmax", weight, "4-bit weight", path)
    nested = None, None
    if state.nested:
        nested = (_need(tensors, f"{weight}.nested_absmax", weight, "double-quantized weight",
                        path),
                  _need(tensors, f"{weight}.nested_quant_map", weight,
                        "double-quantized weight", path))
    if entry.n_bytes != state.packed_bytes:
        raise FormatError(f"holds {entry.n_bytes} bytes but its quant state says shape "
                          f"{list(state.shape)}, which packs into {state.packed_bytes}",
                          path=path, tensor=weight, hint="the checkpoint is damaged")
    width = 1 if absmax[0].dtype == "U8" else 4
    if absmax[0].n_bytes < state.n_blocks * width:
        raise FormatError(f"absmax holds {absmax[0].n_bytes // width} scales for "
                          f"{state.n_blocks} blocks", path=path, tensor=weight,
                          hint="the checkpoint is damaged")
    encoding = BnbEncoding(
        "NF4" if state.quant_type == "nf4" else "FP4", state, _stored(absmax),
        _stored(nested[0]) if nested[0] else None, _stored(nested[1]) if nested[1] else None)
    rows, length = _rows(state.shape, even=True)
    piece = SourceSlice(path, weight, entry.begin, rows, length, length // 2 if length % 2 == 0
                        else entry.n_bytes, encoding.kind, bnb=encoding)
    return BnbWeight(weight, state.shape, piece)


def _eight_bit(weight: str, tensors: Mapping[str, Located]) -> BnbWeight:
    entry, header = tensors[weight]
    module = int8_module(weight)
    scb = _need(tensors, f"{module}.SCB", weight, "8-bit weight", header.path)
    layout = tensors.get(f"{module}.weight_format")
    if layout is not None:
        raw = read_entry_bytes(layout[1], layout[0], limit=16)
        if raw and raw[0] != ROW_MAJOR:
            raise UnsupportedError(f"8-bit weight in bitsandbytes tile layout {raw[0]}, not "
                                   "row-major", path=header.path, tensor=weight,
                                   hint="save the model again with a current bitsandbytes")
    rows, length = _rows(entry.shape, even=False)
    if scb[0].n_elements != rows:
        raise FormatError(f"SCB has {scb[0].n_elements} scales for {rows} rows",
                          path=header.path, tensor=weight, hint="the checkpoint is damaged")
    encoding = BnbEncoding("INT8", scb=_stored(scb))
    piece = SourceSlice(header.path, weight, entry.begin, rows, length, length, "INT8",
                        bnb=encoding)
    return BnbWeight(weight, entry.shape, piece)


def find_bnb_weights(headers: list[SafetensorsHeader], int8: bool) -> BnbInputs:
    """Every bitsandbytes weight of the checkpoint (`int8`: its config says 8-bit, so int8
    `.weight` tensors are LLM.int8() weights and must have their SCB)."""
    tensors: dict[str, Located] = {e.name: (e, h) for h in headers for e in h.entries}
    weights: dict[str, BnbWeight] = {}
    companions: set[str] = set()
    for name, (entry, header) in tensors.items():
        if f".{STATE_PREFIX}" in name:
            weight = name.split(f".{STATE_PREFIX}")[0]
            found = state_key(weight, tensors)  # FormatError for an unknown quant type
            assert found is not None
            weights[weight] = _four_bit(weight, name, found[1], tensors)
            companions.add(name)
            companions.update(f"{weight}.{c}" for c in BNB4_COMPANIONS)
        elif name.endswith(".absmax") and state_key(name.removesuffix(".absmax"),
                                                    tensors) is None:
            raise FormatError("4-bit weight without its quant_state", path=header.path,
                              tensor=name.removesuffix(".absmax"),
                              hint="the checkpoint is incomplete; download it again")
        elif entry.dtype == "I8" and name.endswith(".weight") and (
                int8 or f"{int8_module(name)}.SCB" in tensors):
            weights[name] = _eight_bit(name, tensors)
            companions.update(f"{int8_module(name)}.{c}" for c in ("SCB", "weight_format"))
    return BnbInputs(weights, frozenset(c for c in companions if c in tensors))


def bnb_notes(inputs: BnbInputs) -> list[str]:
    """What the log says about a bitsandbytes source: which modules, and the error it carries."""
    if not inputs.weights:
        return []
    kinds = sorted({w.piece.dtype for w in inputs.weights.values()})
    return [f"dequantized {len(inputs.weights)} bitsandbytes {'/'.join(kinds)} tensors, "
            f"modules: {', '.join(inputs.modules)}",
            "the result carries the bitsandbytes quantization error; quantizing it again "
            "adds a second error on top"]
