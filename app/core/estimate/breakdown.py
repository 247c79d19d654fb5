"""Memory breakdowns: what an estimate is made of, per device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes one device needs, by what needs them."""

    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead

    def __add__(self, other: MemoryBreakdown) -> MemoryBreakdown:
        return MemoryBreakdown(self.weights + other.weights, self.kv_cache + other.kv_cache,
                               self.compute + other.compute, self.overhead + other.overhead)

    def to_json(self) -> dict[str, int]:
        return {"weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache,
                "compute_bytes": self.compute, "overhead_bytes": self.overhead,
                "total_bytes": self.total}


@dataclass(frozen=True)
class RunEstimate:
    """Memory to run a model: RAM, and VRAM on each GPU it uses."""

    backend: str  # "llama.cpp" or "transformers"
    context: int
    ram: MemoryBreakdown
    vram: tuple[MemoryBreakdown, ...] = ()  # one per GPU, in device order
    gpu_layers: int = 0
    total_layers: int = 0  # offloadable layers (llama.cpp counts the output layer)
    approximate: tuple[str, ...] = field(default=())

    @property
    def vram_total(self) -> int:
        return sum(b.total for b in self.vram)

    @property
    def combined(self) -> MemoryBreakdown:
        total = self.ram
        for part in self.vram:
            total = total + part
        return total

    def to_json(self) -> dict[str, Any]:
        combined = self.combined
        return {
            "backend": self.backend,
            "context": self.context,
            "weights_bytes": combined.weights,
            "kv_cache_bytes": combined.kv_cache,
            "compute_bytes": combined.compute,
            "overhead_bytes": combined.overhead,
            "total_ram_bytes": self.ram.total,
            "total_vram_bytes": self.vram_total,
            "ram": self.ram.to_json(),
            "vram": [v.to_json() for v in self.vram],
            "gpu_layers": self.gpu_layers,
            "total_layers": self.total_layers,
            "approximate": list(self.approximate),
        }
