"""Deliberate placement of a model's layers on GPUs and the CPU, for transformers.

A pure planner: from the bytes each layer needs and what each GPU may hold, layers go to the
GPUs in execution order and the rest to the CPU. The result is an explicit `device_map` and
`max_memory`, so that nothing is left to `device_map="auto"` guessing. The budgets and the
bytes per layer come from `app.core.estimate` (its margins, KV cache and activations), so the
loader places what the Fit verdict promised; llama.cpp's layer count comes from the verdict
itself (`estimate.verdict.gpu_layers_that_fit`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core.errors import InsufficientResourcesError
from app.core.estimate.transformers_load import loaded_bytes
from app.core.formats.hf_config import config_value
from app.core.formats.model_info import ModelInfo, TensorInfo, format_bytes

Device = int | str  # a CUDA index, or "cpu"

GIB = 1024**3
# The budgets handed in are already what may be used (the estimate's margins are applied).
DEFAULT_RESERVE_BYTES = 0
DEFAULT_RESERVE_FRACTION = 0.0

HF_LAYER = re.compile(r"^(?P<prefix>.*?(?:^|\.)(?:layers|h|blocks|block)\.(?P<index>\d+))\.")
# bitsandbytes keeps its quantization state next to the weight: `x.weight.absmax`, ...
AUX_AFTER_WEIGHT = re.compile(r"\.weight\..+$")


@dataclass(frozen=True)
class PlacementUnit:
    """Modules that are placed together, in the order the forward pass runs them."""

    name: str
    modules: tuple[str, ...]
    n_bytes: int
    is_layer: bool = False


@dataclass(frozen=True)
class DeviceBudget:
    """A GPU and the bytes free on it now (before the safety margin)."""

    index: int
    free_bytes: int
    name: str = ""


@dataclass(frozen=True)
class Placement:
    device_map: dict[str, Device]
    max_memory: dict[Device, int]
    bytes_by_device: dict[Device, int]
    units_by_device: dict[Device, tuple[str, ...]] = field(default_factory=dict)
    gpu_layers: int = 0
    n_layers: int = 0

    @property
    def uses_gpu(self) -> bool:
        return any(isinstance(d, int) for d in self.bytes_by_device)

    @property
    def main_device(self) -> str:
        """Where inputs go: the device of the first unit (the embeddings)."""
        first = next(iter(self.device_map.values()), "cpu")
        return f"cuda:{first}" if isinstance(first, int) else str(first)

    def describe(self) -> str:
        parts = []
        for device, n_bytes in self.bytes_by_device.items():
            layers = sum(1 for u in self.units_by_device.get(device, ()) if _is_layer_name(u))
            where = f"GPU {device}" if isinstance(device, int) else "the CPU"
            what = f"{layers} layer(s)" if self.n_layers else "all weights"
            parts.append(f"{what} on {where} ({format_bytes(n_bytes)})")
        return ", ".join(parts) if parts else "nothing to place"


def _is_layer_name(name: str) -> bool:
    return name.startswith("layer ")


def usable_bytes(free_bytes: int, reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                 reserve_fraction: float = DEFAULT_RESERVE_FRACTION) -> int:
    """Free bytes minus the safety margin (the larger of a fixed reserve and a fraction)."""
    reserve = max(reserve_bytes, int(free_bytes * reserve_fraction))
    return max(free_bytes - reserve, 0)


def plan_placement(units: Sequence[PlacementUnit], gpus: Sequence[DeviceBudget], *,
                   cpu_bytes: int | None = None,
                   reserve_bytes: int = DEFAULT_RESERVE_BYTES,
                   reserve_fraction: float = DEFAULT_RESERVE_FRACTION,
                   keep_room_for_tail: bool = False) -> Placement:
    """Put units on the GPUs in order, each GPU filled before the next; the rest on the CPU.

    Placement is strictly sequential: once a unit goes to the CPU, every later one does too,
    so activations cross devices as few times as possible. `cpu_bytes` is the RAM that may
    hold the rest; more than that raises `InsufficientResourcesError` before anything loads.
    """
    budgets = [(gpu.index, usable_bytes(gpu.free_bytes, reserve_bytes, reserve_fraction))
               for gpu in gpus]
    # `keep_room_for_tail`: what runs after the last layer (final norm, head) is counted up
    # front, as the estimate counts it: a layer goes to a GPU only if the tail still fits.
    last_layer = max((i for i, u in enumerate(units) if u.is_layer), default=-1)
    tail = (sum(u.n_bytes for u in units[last_layer + 1:])
            if keep_room_for_tail and last_layer >= 0 else 0)
    device_map: dict[str, Device] = {}
    used: dict[Device, int] = {}
    names: dict[Device, list[str]] = {}
    gpu_slot = 0
    gpu_layers = 0
    for unit in units:
        device: Device = "cpu"
        keep = tail if unit.is_layer else 0
        while gpu_slot < len(budgets):
            index, budget = budgets[gpu_slot]
            if used.get(index, 0) + unit.n_bytes + keep <= budget:
                device = index
                break
            gpu_slot += 1
        used[device] = used.get(device, 0) + unit.n_bytes
        names.setdefault(device, []).append(unit.name)
        for module in unit.modules:
            device_map[module] = device
        if unit.is_layer and device != "cpu":
            gpu_layers += 1

    cpu_needed = used.get("cpu", 0)
    if cpu_bytes is not None and cpu_needed > cpu_bytes:
        on_gpu = sum(v for k, v in used.items() if k != "cpu")
        raise InsufficientResourcesError(
            f"the model needs {format_bytes(cpu_needed)} of RAM for the part that does not fit "
            f"on the GPU ({format_bytes(on_gpu)} placed there), but only "
            f"{format_bytes(cpu_bytes)} is available",
            needed_bytes=cpu_needed, available_bytes=cpu_bytes,
            hint="close other programs, use a smaller quantization, or a machine with more "
                 "memory")
    max_memory: dict[Device, int] = {index: budget for index, budget in budgets}
    max_memory["cpu"] = cpu_bytes if cpu_bytes is not None else cpu_needed
    ordered = {d: used[d] for d in sorted(used, key=lambda d: (d == "cpu", str(d)))}
    return Placement(
        device_map=device_map, max_memory=max_memory, bytes_by_device=ordered,
        units_by_device={d: tuple(n) for d, n in names.items()},
        gpu_layers=gpu_layers, n_layers=sum(1 for u in units if u.is_layer))


# -- Per-layer weight bytes ------------------------------------------------------------------

def tensor_load_bytes(tensor: TensorInfo, load_dtype_bytes: int | None) -> int:
    """Bytes a tensor takes once loaded: the estimate's rule (floats at the load dtype,
    quantized weights as stored)."""
    if load_dtype_bytes is None:
        return tensor.n_bytes
    return loaded_bytes(tensor, load_dtype_bytes)


def hf_placement_units(info: ModelInfo, load_dtype_bytes: int | None) -> list[PlacementUnit]:
    """Group an HF checkpoint's tensors into placement units, in forward-pass order.

    Layers are `...layers.N` (or `h.N`, `blocks.N`); every other tensor's module is its own
    unit. Tied embeddings keep `lm_head` with the embedding, where the shared weight lives.
    """
    layers: dict[str, tuple[str, int, int]] = {}  # prefix -> (container, index, bytes)
    containers: list[str] = []
    others: dict[str, int] = {}
    for tensor in info.tensors:
        name = AUX_AFTER_WEIGHT.sub(".weight", tensor.name)
        n_bytes = tensor_load_bytes(tensor, load_dtype_bytes)
        match = HF_LAYER.match(name)
        if match:
            prefix = match["prefix"]
            container = prefix.rsplit(".", 1)[0]
            if container not in containers:
                containers.append(container)
            _, index, total = layers.get(prefix, (container, int(match["index"]), 0))
            layers[prefix] = (container, index, total + n_bytes)
        else:
            module = name.rsplit(".", 1)[0] if "." in name else name
            others[module] = others.get(module, 0) + n_bytes

    has_lm_head = "lm_head" in others
    tied = config_value(info.metadata, "tie_word_embeddings")
    if tied is None:
        tied = not has_lm_head
    embeddings = [m for m in others if _is_embedding(m)]
    before = [PlacementUnit(m, (m,), others[m]) for m in embeddings]
    if before and tied:
        # The head shares the embedding's weight: one copy, on the embedding's device.
        first = before[0]
        before[0] = PlacementUnit(first.name, first.modules + ("lm_head",), first.n_bytes)
        others.pop("lm_head", None)
    ordered = sorted(layers.items(), key=lambda kv: (containers.index(kv[1][0]), kv[1][1]))
    middle = [PlacementUnit(f"layer {index}" if len(containers) == 1 else f"layer {prefix}",
                            (prefix,), n_bytes, is_layer=True)
              for prefix, (_, index, n_bytes) in ordered]
    after = [PlacementUnit(m, (m,), n) for m, n in others.items() if m not in embeddings]
    after.sort(key=lambda u: u.name == "lm_head")  # the head runs last
    return before + middle + after


def _is_embedding(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return "embed" in leaf or leaf in ("wte", "wpe", "word_embeddings")


def complete_device_map(device_map: dict[str, Device],
                        parameter_names: Sequence[str]) -> dict[str, Device]:
    """Cover every parameter the instantiated model has, not only those the checkpoint named.

    A module the checkpoint does not store (rotary tables, a renamed layer container) goes to
    the device of the first unit, where the forward pass starts.
    """
    if not device_map:
        return {"": "cpu"}
    first = next(iter(device_map.values()))
    completed = dict(device_map)
    for name in parameter_names:
        if not _covered(name, completed):
            module = name.rsplit(".", 1)[0] if "." in name else name
            completed[module] = first
    return completed


def _covered(name: str, device_map: dict[str, Device]) -> bool:
    return any(key == "" or name == key or name.startswith(key + ".") for key in device_map)
