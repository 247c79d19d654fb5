"""The Hugging Face architectures Modelyard converts, and their hyperparameters as GGUF metadata.

Key names and value types come from gguf-py's `GGUFWriter.add_*` methods; which hyperparameter
feeds which key follows llama.cpp's convert_hf_to_gguf.py (TextModel, LlamaModel, Qwen2Model,
Qwen2MoeModel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter, RopeScalingType

from app.core.errors import FormatError, UnsupportedError


@dataclass(frozen=True)
class ArchSpec:
    model_type: str  # HF config.json `model_type`
    gguf_arch: MODEL_ARCH
    permute_qk: bool  # llama.cpp's rotary embedding wants Q/K rows interleaved (llama arch)
    moe: bool
    # Where HF checkpoints keep one tensor per expert ("...<prefix>.<expert>.w1.weight"); picks
    # the HF spelling among TensorNameMap's candidates when writing HF weights back.
    expert_prefix: str = ""

    @property
    def gguf_name(self) -> str:
        return MODEL_ARCH_NAMES[self.gguf_arch]


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", MODEL_ARCH.LLAMA, True, False),
    "mistral": ArchSpec("mistral", MODEL_ARCH.LLAMA, True, False),
    "mixtral": ArchSpec("mixtral", MODEL_ARCH.LLAMA, True, True, "block_sparse_moe.experts"),
    "qwen2": ArchSpec("qwen2", MODEL_ARCH.QWEN2, False, False),
    "qwen2_moe": ArchSpec("qwen2_moe", MODEL_ARCH.QWEN2MOE, False, True, "mlp.experts"),
}


def arch_spec(model_type: str | None) -> ArchSpec:
    spec = ARCHITECTURES.get(model_type or "")
    if spec is None:
        shown = repr(model_type) if model_type else "unknown (config.json names no model_type)"
        raise UnsupportedError(f"architecture {shown} cannot be converted",
                               hint=f"supported: {', '.join(sorted(ARCHITECTURES))}")
    return spec


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters conversion needs, read and checked once."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    vocab_size: int
    context_length: int | None
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_expert: int | None = None
    n_ff_shared: int | None = None


def _int(config: dict[str, Any], key: str, required: bool = True) -> int | None:
    value = config.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FormatError(f"config.json: {key} is {value!r}, expected a positive integer")
    return value


def read_hyper(config: dict[str, Any], spec: ArchSpec) -> Hyper:
    n_head = _int(config, "num_attention_heads")
    n_embd = _int(config, "hidden_size")
    assert n_head is not None and n_embd is not None
    head_dim = config.get("head_dim") or n_embd // n_head
    n_expert = 0
    if spec.moe:
        n_expert = _int(config, "num_local_experts", False) or _int(config, "num_experts") or 0
    return Hyper(
        n_layer=_int(config, "num_hidden_layers") or 0,
        n_embd=n_embd,
        n_ff=_int(config, "intermediate_size") or 0,
        n_head=n_head,
        n_head_kv=_int(config, "num_key_value_heads", False) or n_head,
        head_dim=int(head_dim),
        vocab_size=_int(config, "vocab_size") or 0,
        context_length=_int(config, "max_position_embeddings", False),
        n_expert=n_expert,
        n_expert_used=(_int(config, "num_experts_per_tok", False) or 0) if spec.moe else 0,
        n_ff_expert=_int(config, "moe_intermediate_size", False),
        n_ff_shared=_int(config, "shared_expert_intermediate_size", False),
    )


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 writes `rope_parameters`; older configs `rope_theta` and `rope_scaling`."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    if "rope_type" not in params and params.get("type") is not None:
        params["rope_type"] = params["type"]
    return params


def add_hyperparameters(writer: GGUFWriter, config: dict[str, Any], spec: ArchSpec,
                        hyper: Hyper) -> list[str]:
    """Write every hyperparameter the runtime needs; return notes for the job's log."""
    notes: list[str] = []
    writer.add_block_count(hyper.n_layer)
    if hyper.context_length is not None:
        writer.add_context_length(hyper.context_length)
    writer.add_embedding_length(hyper.n_embd)
    writer.add_feed_forward_length(hyper.n_ff)
    writer.add_head_count(hyper.n_head)
    writer.add_head_count_kv(hyper.n_head_kv)
    rope = rope_parameters(config)
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    notes.extend(_add_rope_scaling(writer, rope))
    eps = config.get("rms_norm_eps")
    if eps is not None:
        writer.add_layer_norm_rms_eps(float(eps))
    if spec.moe:
        writer.add_expert_count(hyper.n_expert)
        writer.add_expert_used_count(hyper.n_expert_used)
        if hyper.n_ff_expert is not None:
            writer.add_expert_feed_forward_length(hyper.n_ff_expert)
        if hyper.n_ff_shared is not None:
            writer.add_expert_shared_feed_forward_length(hyper.n_ff_shared)
    if config.get("head_dim") is not None:
        writer.add_key_length(hyper.head_dim)
        writer.add_value_length(hyper.head_dim)
    window = config.get("sliding_window")
    if isinstance(window, int) and window > 0 and config.get("use_sliding_window", True):
        writer.add_sliding_window(window)
        notes.append(f"sliding window {window} recorded (llama.cpp's {spec.gguf_name} "
                     "architecture attends to the whole context)")
    writer.add_vocab_size(hyper.vocab_size)
    if spec.gguf_arch == MODEL_ARCH.LLAMA:
        writer.add_rope_dimension_count(hyper.head_dim)
    return notes


def _add_rope_scaling(writer: GGUFWriter, rope: dict[str, Any]) -> list[str]:
    kind = str(rope.get("rope_type") or "default").lower()
    factor = rope.get("factor")
    if kind == "linear" and factor is not None:
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
        return [f"rope scaling linear x{factor}"]
    if kind == "yarn" and factor is not None:
        writer.add_rope_scaling_type(RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        original = rope.get("original_max_position_embeddings")
        if original is not None:
            writer.add_rope_scaling_orig_ctx_len(int(original))
        return [f"rope scaling yarn x{factor}"]
    if kind == "llama3":
        return ["llama3 rope scaling: rope_freqs.weight generated"]
    if kind not in ("default", "none"):
        raise UnsupportedError(f"rope scaling type {kind!r} is not supported for conversion")
    return []


def llama3_rope_factors(config: dict[str, Any], hyper: Hyper) -> list[float] | None:
    """The per-frequency factors llama.cpp reads from `rope_freqs.weight` for Llama 3.1+ models."""
    rope = rope_parameters(config)
    if str(rope.get("rope_type") or "").lower() != "llama3":
        return None
    base = float(rope.get("rope_theta", 10000.0))
    dim = hyper.head_dim
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen = old_context / low
    high_wavelen = old_context / high
    import torch

    # float32 like llama.cpp's converter, so the factors are the same to the bit
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors

