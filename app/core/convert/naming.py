"""Output names following the usual convention: `Name-Q8_0.gguf`, `Name-hf`."""

from __future__ import annotations

import re
from pathlib import Path

from app.core.formats.gguf_model import split_shard_info
from app.core.formats.model_info import ModelInfo

# A quant label already in a source name (Name-F16.gguf, name.Q4_K_M.gguf) is replaced, not
# repeated: "Name-F16" converted to Q8_0 becomes "Name-Q8_0", not "Name-F16-Q8_0".
_QUANT_SUFFIX = re.compile(
    r"[-._](?:F32|F16|BF16|FP16|FP32|Q\d(?:_[0-9A-Z]+)*|IQ\d(?:_[A-Z0-9]+)*|TQ\d_\d)$",
    re.IGNORECASE)


def base_name(model: ModelInfo) -> str:
    """The model's name without extension, shard numbering or quant label."""
    if model.format == "gguf":
        info = split_shard_info(model.path)
        stem = info[0] if info else model.path.stem
    else:
        stem = model.path.name
    stem = stem.split("/")[-1]
    for _ in range(2):  # "name.Q4_K_M-F16" style double labels
        stem = _QUANT_SUFFIX.sub("", stem)
    return stem or "model"


def default_output_name(model: ModelInfo, target: str, to: str = "gguf") -> str:
    """`Name-Q8_0.gguf` for a GGUF of type `target`; `Name-hf` (a folder) for `to="hf"`."""
    name = base_name(model)
    if to == "hf":
        return f"{name}-hf"
    return f"{name}-{target.upper()}.gguf"


def default_output_path(model: ModelInfo, target: str, to: str = "gguf") -> Path:
    """Beside the source: the folder holding a GGUF, or the parent of an HF model folder."""
    folder = model.path.parent
    return folder / default_output_name(model, target, to)
