"""Where a quantized GGUF came from: a local HF folder of the same model, or the Hub repo its
metadata names. Converting from the original avoids stacking a second quantization error."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.errors import ModelyardError
from app.core.estimate.shape import model_shape
from app.core.formats.model_info import ModelInfo

# Source types that carry no quantization error of their own.
UNQUANTIZED = ("F32", "F16", "BF16")


def is_quantized(model: ModelInfo) -> bool:
    return model.format == "gguf" and (model.quantization or "F32").upper() not in UNQUANTIZED


def _shape_key(model: ModelInfo) -> tuple[int, ...] | None:
    try:
        shape = model_shape(model)
    except ModelyardError:
        return None
    if shape.n_layer <= 0 or not shape.n_embd:
        return None
    return (shape.n_layer, shape.n_embd, shape.n_ff, shape.n_head, shape.n_vocab,
            shape.n_experts)


def local_originals(model: ModelInfo, models: Sequence[ModelInfo]) -> list[ModelInfo]:
    """Unquantized HF folders among `models` with the same architecture and shape as the
    quantized GGUF `model` (its layers, widths, heads, vocabulary and experts)."""
    if not is_quantized(model):
        return []
    key = _shape_key(model)
    if key is None:
        return []
    return [m for m in models if m.format == "hf" and not m.fatal_problems
            and (m.quantization or "").upper() in ("", *UNQUANTIZED)
            and _shape_key(m) == key]


def hub_original(model: ModelInfo) -> str | None:
    """The Hub repo the GGUF's metadata names as its base model, if any."""
    meta = model.metadata
    url = meta.get("general.base_model.0.repo_url")
    if isinstance(url, str) and "huggingface.co/" in url:
        return url.split("huggingface.co/", 1)[1].strip("/") or None
    name, org = meta.get("general.base_model.0.name"), meta.get(
        "general.base_model.0.organization")
    if isinstance(name, str) and isinstance(org, str) and name and org:
        return f"{org}/{name}".replace(" ", "-")
    return None
