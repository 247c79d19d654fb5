"""Resolve a parameter for one tensor: scalars, per-layer gradients and filter-keyed values.

As in mergekit: the first scope that sets a parameter wins (the input's own parameters, then
the slice's, then the global ones); a list of numbers is a gradient interpolated at the layer's
position t ∈ [0, 1] in its slice (t = 0 for tensors outside the layers); a list of
`{filter, value}` entries takes the first whose filter is a substring of the tensor name (no
filter, or `*`, matches everything).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from app.core.merge.config import Setting

_MISSING = object()


def evaluate(value: Any, tensor: str, t: float) -> Any:
    """The value of one setting for `tensor` at layer position `t` (None: no filter matched)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for entry in value:
            name_filter = entry.get("filter")
            if name_filter in (None, "*") or (tensor and str(name_filter) in tensor):
                return evaluate(entry["value"], tensor, t)
        return None
    if isinstance(value, list) and value:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not numbers:
            return value[int(t * (len(value) - 1))]
        scaled = t * (len(value) - 1)
        low = int(scaled)
        high = min(len(value) - 1, low + 1)
        frac = scaled - low
        return (1 - frac) * value[low] + frac * value[high]
    return None


def resolve(name: str, scopes: Iterable[dict[str, Setting]], tensor: str, t: float,
            default: Any = _MISSING) -> tuple[Any, int | None]:
    """(value, line it came from); `default` with line None when no scope sets it.

    Raises KeyError when there is no value and no default (the caller names the input).
    """
    for scope in scopes:
        setting = scope.get(name)
        if setting is None:
            continue
        value = evaluate(setting.value, tensor, t)
        if value is not None:
            return value, setting.line
    if default is _MISSING:
        raise KeyError(name)
    return default, None


def as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ValueError(f"{value!r} is not true or false")


def tensor_seed(seed: int, tensor: str, input_index: int) -> int:
    """A 63-bit seed for one input's mask of one tensor: independent of the merge order."""
    digest = hashlib.sha256(f"{seed}\0{tensor}\0{input_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
