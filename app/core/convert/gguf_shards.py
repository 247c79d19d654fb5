"""A GGUF output split into shards the way llama.cpp's gguf-split writes them: files named
`NAME-00001-of-00003.gguf`, every shard marked with split.no / split.count /
split.tensors.count, the model's metadata in the first one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gguf import GGUFValueType

from app.core.convert.metadata import MetaEntry
from app.core.convert.plan import ConversionPlan, TensorPlan
from app.core.errors import OptionError, OptionFact
from app.core.formats.gguf_model import split_shard_info

# gguf-split's units: decimal, M and G.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
# Bytes of one tensor info in a shard's header (name, dims, type, offset), for sizes.
TENSOR_INFO_BYTES = 64


def parse_split_size(text: str, option: str = "split_max_size") -> int:
    """A largest shard size: bytes, or a number with K, M or G and an optional B (decimal, as
    gguf-split reads it); `option` names the job option it sets, for the error."""
    match = _SIZE.match(str(text))
    if not match or float(match[1]) <= 0:
        raise OptionError(f"the shard size {text!r} is not a size such as 500M or 4G",
                          option=OptionFact(option))
    return int(float(match[1]) * _UNITS[match[2].upper()])


def shard_paths(target: Path, count: int) -> list[Path]:
    """`OUT.gguf` → `OUT-00001-of-0000N.gguf`, ...; a target already named like a shard keeps
    its base name."""
    info = split_shard_info(target)
    base = info[0] if info else target.name.removesuffix(".gguf")
    return [target.with_name(f"{base}-{i + 1:05d}-of-{count:05d}.gguf") for i in range(count)]


def assign_by_size(tensors: Sequence[TensorPlan], max_bytes: int, alignment: int = 32
                   ) -> list[int]:
    """The shard of each tensor: in order, a new shard when the next tensor would make the
    current one exceed `max_bytes` (a tensor larger than that gets a shard of its own)."""
    shards, size, current = [], 0, 0
    for tensor in tensors:
        padded = tensor.n_bytes + (-tensor.n_bytes % alignment)
        if size and size + padded > max_bytes:
            current += 1
            size = 0
        shards.append(current)
        size += padded
    return shards


def split_entries(index: int, count: int, n_tensors: int) -> tuple[MetaEntry, ...]:
    return (MetaEntry("split.no", index, GGUFValueType.UINT16),
            MetaEntry("split.count", count, GGUFValueType.UINT16),
            MetaEntry("split.tensors.count", n_tensors, GGUFValueType.INT32))


def shard_plans(plan: ConversionPlan, shard_of: Sequence[int]) -> tuple[ConversionPlan, ...]:
    """`plan` cut into one plan per shard; `shard_of` gives each tensor's shard, in order."""
    count = max(shard_of, default=0) + 1
    if count == 1:
        return (plan,)
    paths = shard_paths(plan.target, count)
    plans = []
    for index, path in enumerate(paths):
        tensors = tuple(t for t, s in zip(plan.tensors, shard_of, strict=True) if s == index)
        split = split_entries(index, count, len(plan.tensors))
        if index == 0:
            plans.append(replace(plan, target=path, tensors=tensors,
                                 metadata=plan.metadata + split))
        else:
            plans.append(replace(plan, target=path, tensors=tensors, metadata=split,
                                 copy_metadata_from=None, notes=(), warnings=(),
                                 metadata_bytes=4096 + TENSOR_INFO_BYTES * len(tensors)))
    return tuple(plans)
