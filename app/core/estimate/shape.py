"""The hyperparameters memory depends on, read from GGUF metadata or a HF config.json.

What cannot be read is guessed from the tensors where possible and otherwise left out, and every
guess is recorded in `approximate` so the estimate says why it may be off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core.formats.gguf_model import KNOWN_ARCHITECTURES
from app.core.formats.hf_config import (
    CONTEXT_KEYS,
    EXPERT_KEYS,
    EXPERTS_USED_KEYS,
    LAYER_KEYS,
    config_int,
    config_value,
)
from app.core.formats.model_info import ModelInfo, TensorInfo

# Architectures whose llama.cpp loader applies a sliding-window pattern by default (every Nth
# layer is global), from src/models/*.cpp `load_swa_pattern(ml, N)`; GGUF metadata may override.
DEFAULT_SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "gpt-oss": 2,
                       "llama4": 4, "exaone4": 4}
# llama.cpp marks the first layer of each pattern as the dense one for these.
DENSE_FIRST_SWA = frozenset({"cohere2moe", "smallthinker"})
# Hugging Face model types whose config.json uses the keys read below (hidden_size,
# num_attention_heads, num_key_value_heads, head_dim, intermediate_size, sliding_window and
# layer_types, expert counts) with their usual meaning, and whose blocks are plain attention
# plus a (gated or expert) MLP. Any other type is estimated the same way but flagged.
KNOWN_HF_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
    "gemma2", "gemma3_text", "phi3", "granite", "olmo", "olmo2", "starcoder2", "smollm3"})
GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.")
HF_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    architecture: str | None
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer (GQA, and models whose KV heads vary by layer)
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int | None
    sliding_window: int | None
    swa_layers: tuple[bool, ...]  # per layer: True where the layer attends a sliding window
    n_experts: int
    n_experts_used: int
    tied_embeddings: bool
    approximate: tuple[str, ...] = field(default=())

    @property
    def n_layers_offloadable(self) -> int:
        """llama.cpp counts the output layer as one more offloadable layer."""
        return self.n_layer + 1


def swa_pattern(n_layer: int, n_pattern: int, dense_first: bool = False) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern: which layers use the sliding window."""
    if dense_first:
        return tuple(n_pattern == 0 or i % n_pattern != 0 for i in range(n_layer))
    return tuple(n_pattern == 0 or i % n_pattern < n_pattern - 1 for i in range(n_layer))


def _layers_from_tensors(names: Sequence[str], pattern: re.Pattern[str]) -> int:
    indices = [int(m.group(1)) for n in names if (m := pattern.search(n))]
    return max(indices) + 1 if indices else 0


def _vocab_from_tensors(tensors: Sequence[TensorInfo], gguf: bool) -> int:
    for tensor in tensors:
        if tensor.name in ("token_embd.weight", "model.embed_tokens.weight",
                           "transformer.wte.weight") and len(tensor.shape) == 2:
            return tensor.shape[1] if gguf else tensor.shape[0]
    return 0


def _as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _per_layer(value: Any, n_layer: int, default: int) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == n_layer and all(isinstance(v, int) for v in value):
        return tuple(value)
    number = _as_int(value)
    return (number if number is not None else default,) * n_layer


def shape_from_gguf(model: ModelInfo) -> ModelShape:
    meta = model.metadata
    arch = model.architecture or ""
    notes: list[str] = []
    if arch and arch not in KNOWN_ARCHITECTURES:
        notes.append(f"architecture {arch!r} is unknown to the estimator (and to this "
                     "llama.cpp): its layers are sized as plain transformer blocks")

    def arch_key(suffix: str) -> Any:
        return meta.get(f"{arch}.{suffix}")

    names = [t.name for t in model.tensors]
    n_layer = _as_int(arch_key("block_count")) or _layers_from_tensors(names, GGUF_BLOCK)
    if not _as_int(arch_key("block_count")):
        notes.append("block_count missing: layers counted from tensor names")
    n_embd = _as_int(arch_key("embedding_length")) or 0
    n_head = _as_int(arch_key("attention.head_count")) or 0
    if not n_embd or not n_head:
        notes.append("embedding length or head count missing: KV cache and compute buffers "
                     "left out")
    raw_kv = arch_key("attention.head_count_kv")
    n_head_kv = _per_layer(raw_kv, n_layer, n_head)
    head_dim = n_embd // n_head if n_head else 0
    head_k = _as_int(arch_key("attention.key_length")) or head_dim
    head_v = _as_int(arch_key("attention.value_length")) or head_dim
    if arch_key("attention.kv_lora_rank") is not None:
        notes.append("multi-head latent attention: KV cache estimated as plain attention")
    n_vocab = _as_int(arch_key("vocab_size")) or _vocab_from_tensors(model.tensors, gguf=True)
    window = _as_int(arch_key("attention.sliding_window"))
    swa = (False,) * n_layer
    if window:
        declared = arch_key("attention.sliding_window_pattern")
        if isinstance(declared, list) and len(declared) == n_layer:
            swa = tuple(bool(v) for v in declared)
        elif _as_int(declared) is not None:
            swa = swa_pattern(n_layer, int(declared), arch in DENSE_FIRST_SWA)
        elif arch in DEFAULT_SWA_PATTERN:
            swa = swa_pattern(n_layer, DEFAULT_SWA_PATTERN[arch], arch in DENSE_FIRST_SWA)
    n_experts = _as_int(arch_key("expert_count")) or 0
    n_ff = _as_int(arch_key("expert_feed_forward_length")) if n_experts else None
    return ModelShape(
        architecture=model.architecture, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim_k=head_k, head_dim_v=head_v,
        n_ff=n_ff or _as_int(arch_key("feed_forward_length")) or 0,
        n_vocab=n_vocab, n_ctx_train=_as_int(arch_key("context_length")),
        sliding_window=window if any(swa) else None, swa_layers=swa,
        n_experts=n_experts, n_experts_used=_as_int(arch_key("expert_used_count")) or 0,
        tied_embeddings="output.weight" not in names, approximate=tuple(notes))


def shape_from_hf(model: ModelInfo) -> ModelShape:
    config = model.metadata
    notes: list[str] = []
    if model.architecture not in KNOWN_HF_MODEL_TYPES:
        shown = repr(model.architecture) if model.architecture else "(none in config.json)"
        notes.append(f"architecture {shown} is unknown to the estimator: its layers are sized "
                     "as plain transformer blocks from config.json")
    names = [t.name for t in model.tensors]
    n_layer = config_int(config, *LAYER_KEYS) or _layers_from_tensors(names, HF_LAYER)
    n_embd = config_int(config, "hidden_size", "n_embd", "d_model") or 0
    n_head = config_int(config, "num_attention_heads", "n_head") or 0
    if not n_embd or not n_head:
        notes.append("hidden size or head count missing from config.json: KV cache and "
                     "activations left out")
    n_head_kv = _per_layer(config_value(config, "num_key_value_heads"), n_layer, n_head)
    head_dim = config_int(config, "head_dim") or (n_embd // n_head if n_head else 0)
    window = config_int(config, "sliding_window")
    layer_types = config_value(config, "layer_types")
    swa = (False,) * n_layer
    if window and isinstance(layer_types, list) and len(layer_types) == n_layer:
        swa = tuple(t == "sliding_attention" for t in layer_types)
    elif window and config_value(config, "use_sliding_window") is not False:
        swa = (True,) * n_layer  # Mistral-style: every layer windowed when the config says so
    tied = config_value(config, "tie_word_embeddings")
    n_experts = config_int(config, *EXPERT_KEYS) or 0
    return ModelShape(
        architecture=model.architecture, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim_k=head_dim, head_dim_v=head_dim,
        n_ff=config_int(config, "moe_intermediate_size", "intermediate_size", "n_inner",
                        "ffn_dim") or 0,
        n_vocab=config_int(config, "vocab_size") or _vocab_from_tensors(model.tensors, False),
        n_ctx_train=config_int(config, *CONTEXT_KEYS),
        sliding_window=window if any(swa) else None, swa_layers=swa,
        n_experts=n_experts if n_experts > 1 else 0,
        n_experts_used=config_int(config, *EXPERTS_USED_KEYS) or 0,
        tied_embeddings=bool(tied) if tied is not None else "lm_head.weight" not in names,
        approximate=tuple(notes))


def model_shape(model: ModelInfo) -> ModelShape:
    return shape_from_gguf(model) if model.format == "gguf" else shape_from_hf(model)
