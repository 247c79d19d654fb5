"""Reading Hugging Face `config.json` files without transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.errors import FormatError

# Different model families name the same hyperparameter differently.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
EXPERTS_USED_KEYS = ("num_experts_per_tok", "moe_topk", "top_k")


def load_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(f"cannot read ({exc.strerror or exc})", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not valid JSON ({exc})", path=path,
                          hint="fix or re-download the file") from None
    if not isinstance(data, dict):
        raise FormatError("is not a JSON object", path=path)
    return data


def config_value(config: dict[str, Any], *names: str) -> Any:
    """The first of `names` set in the config, looking into `text_config` of multimodal models."""
    for scope in (config, config.get("text_config")):
        if isinstance(scope, dict):
            for name in names:
                value = scope.get(name)
                if value is not None:
                    return value
    return None


def config_int(config: dict[str, Any], *names: str) -> int | None:
    value = config_value(config, *names)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def model_type(config: dict[str, Any]) -> str | None:
    value = config.get("model_type")
    if isinstance(value, str) and value:
        return value
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None
