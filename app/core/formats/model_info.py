"""What a scan finds: frozen descriptions of models, their tensors and their problems."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ModelFormat = Literal["gguf", "hf", "pickle"]
ExpertLayout = Literal["stacked", "split", "mixed"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # GGML type name (Q4_K, F16) or safetensors dtype (BF16), NF4/INT8 for bnb weights
    shape: tuple[int, ...]  # as stored: GGUF ne order for GGUF, row-major for safetensors
    n_bytes: int
    n_params: int  # logical parameters; 0 for auxiliary tensors (bnb absmax, GPTQ zeros ...)
    file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": list(self.shape),
                "n_bytes": self.n_bytes}


@dataclass(frozen=True)
class MoEInfo:
    n_experts: int
    n_experts_used: int | None
    layout: ExpertLayout | None  # None when no expert tensors were found
    # The layout found and which runtimes load which (GGUF, where runtimes differ).
    explanation: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"n_experts": self.n_experts, "n_experts_used": self.n_experts_used,
                "layout": self.layout, "explanation": self.explanation}


@dataclass(frozen=True)
class Problem:
    """Something wrong with a model. `fatal` means it cannot be read or loaded as it is."""

    text: str
    fatal: bool = False
    kind: str | None = None  # what a front end can offer to fix: "expert-layout"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path  # the GGUF file (first shard) or the model folder
    format: ModelFormat
    files: tuple[Path, ...] = ()
    architecture: str | None = None
    parameters: int = 0
    file_size: int = 0
    tensors: tuple[TensorInfo, ...] = ()
    quantization: str | None = None  # Q4_K_M, BF16, bnb-nf4, gptq-4bit ...
    context_length: int | None = None
    n_layers: int | None = None
    moe: MoEInfo | None = None
    has_tokenizer: bool = False
    problems: tuple[Problem, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = "folder"  # folder | hf-cache | hub
    repo_id: str | None = None

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)

    @property
    def tensor_types(self) -> dict[str, int]:
        return dict(Counter(t.type for t in self.tensors).most_common())

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def to_json(self, with_tensors: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "format": self.format,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "n_tensors": self.n_tensors,
            "tensor_types": self.tensor_types,
            "quantization": self.quantization,
            "file_size": self.file_size,
            "context_length": self.context_length,
            "n_layers": self.n_layers,
            "moe": self.moe.to_json() if self.moe else None,
            "has_tokenizer": self.has_tokenizer,
            "source": self.source,
            "repo_id": self.repo_id,
            "problems": [p.text for p in self.problems],
        }
        if with_tensors:
            data["tensors"] = [t.to_json() for t in self.tensors]
        return data


def broken_model(path: Path, fmt: ModelFormat, problems: Iterable[Problem],
                 name: str | None = None, files: tuple[Path, ...] = ()) -> ModelInfo:
    """A model that could not be read: what is known (name, size) plus why."""
    size = 0
    for file in files or (path,):
        try:
            size += file.stat().st_size if file.is_file() else 0
        except OSError:
            pass
    return ModelInfo(name=name or path.name, path=path, format=fmt, files=files or (path,),
                     file_size=size, problems=tuple(problems))


def format_bytes(n_bytes: float) -> str:
    """Human size with binary units, as file managers show it (1.5 GiB)."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_count(count: int) -> str:
    """Parameter counts the way model cards write them: 135M, 7.2B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{suffix}" if value >= 100 else f"{value:.3g}{suffix}"
    return str(count)
