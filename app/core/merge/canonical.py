"""Canonical names: the same weight under every naming and expert layout.

Checkpoints of one architecture name their MoE experts differently: one tensor per expert
(`block_sparse_moe.experts.E.w1.weight` as Mixtral is saved, `mlp.experts.E.gate_proj.weight`
in Qwen2-MoE) or all experts fused into one tensor (`mlp.experts.gate_up_proj` [E, 2·F, H] and
`mlp.experts.down_proj` [E, H, F], as transformers 5 holds Mixtral). A tensor is described as
units, each a canonical key (`model.layers.0.experts.3.gate`) with where it sits in the stored
tensor, so inputs of either layout are matched unit by unit and assembled in the base's layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Per-expert projection names → the role they play (Mixtral's w1/w3/w2 are gate/up/down).
EXPERT_ROLES = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up",
                "down_proj": "down"}
_PER_EXPERT = re.compile(r"^(?P<head>.*)\.(?:block_sparse_moe|mlp)\.experts\.(?P<expert>\d+)\."
                         r"(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_FUSED = re.compile(r"^(?P<head>.*)\.(?:block_sparse_moe|mlp)\.experts\."
                    r"(?P<proj>gate_up_proj|w1|w2|w3|gate_proj|up_proj|down_proj)(?:\.weight)?$")
_ROUTER = re.compile(r"^(?P<head>.*)\.(?:block_sparse_moe|mlp)\.gate\.weight$")
_LAYER = re.compile(r"^(?P<head>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\."
                    r"(?P<tail>.+)$")


@dataclass(frozen=True)
class Unit:
    """One canonical piece of a stored tensor: `tensor[expert][rows]` (None: all)."""

    key: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class Layout:
    """How a stored tensor is made of units: `fused` tensors stack one row of units per
    expert (each row concatenated along the first axis); others are a single unit."""

    units: tuple[tuple[Unit, ...], ...]
    fused: bool = False

    def keys(self) -> list[str]:
        return [unit.key for row in self.units for unit in row]


def split_layer(name: str) -> tuple[str, int, str] | None:
    """`model.layers.3.mlp.up_proj.weight` → ("model.layers", 3, "mlp.up_proj.weight")."""
    match = _LAYER.match(name)
    if match is None:
        return None
    return match["head"], int(match["index"]), match["tail"]


def with_layer(name: str, index: int) -> str:
    parts = split_layer(name)
    if parts is None:
        return name
    head, _old, tail = parts
    return f"{head}.{index}.{tail}"


def layout_of(name: str, shape: tuple[int, ...]) -> Layout:
    """The units of a stored tensor, from its name and shape."""
    match = _PER_EXPERT.match(name)
    if match:
        role = EXPERT_ROLES[match["proj"]]
        return Layout(((Unit(f"{match['head']}.experts.{match['expert']}.{role}"),),))
    match = _FUSED.match(name)
    if match and len(shape) == 3:
        head, proj = match["head"], match["proj"]
        n_experts = shape[0]
        if proj == "gate_up_proj":
            half = shape[1] // 2
            rows = tuple((Unit(f"{head}.experts.{e}.gate", e, (0, half)),
                          Unit(f"{head}.experts.{e}.up", e, (half, shape[1])))
                         for e in range(n_experts))
        else:
            role = EXPERT_ROLES[proj]
            rows = tuple((Unit(f"{head}.experts.{e}.{role}", e),) for e in range(n_experts))
        return Layout(rows, fused=True)
    match = _ROUTER.match(name)
    if match:
        return Layout(((Unit(f"{match['head']}.router"),),))
    return Layout(((Unit(name),),))


def unit_shape(unit: Unit, shape: tuple[int, ...]) -> tuple[int, ...]:
    inner = shape[1:] if unit.expert is not None else shape
    if unit.rows is not None:
        inner = (unit.rows[1] - unit.rows[0], *inner[1:])
    return tuple(inner)

