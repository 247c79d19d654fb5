"""HF tensor names → GGUF names with gguf-py's `TensorNameMap`, and the shapes they must have."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import MODEL_TENSOR, MODEL_TENSORS, TensorNameMap

from app.core.convert.hf_arch import ArchSpec, Hyper

# One tensor per expert in HF checkpoints (Mixtral `...experts.3.w1.weight`, Qwen2-MoE
# `...mlp.experts.3.gate_proj.weight`); llama.cpp stacks them into `blk.N.ffn_*_exps.weight`,
# whose HF-side name in TensorNameMap is the same without the expert number.
EXPERT_NAME = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<xid>\d+)\.(?P<w>[A-Za-z0-9_]+)"
                         r"\.weight$")
# Buffers some checkpoints save that are no weights (llama.cpp's converter skips them too).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")
EXPERT_KINDS = frozenset({MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP,
                          MODEL_TENSOR.FFN_DOWN_EXP})
QK_KINDS = frozenset({MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K})


@dataclass(frozen=True)
class MappedName:
    gguf_name: str
    kind: MODEL_TENSOR
    expert: int | None = None  # set for a per-expert HF tensor stacked into `gguf_name`

    @property
    def block(self) -> int | None:
        parts = self.gguf_name.split(".")
        return int(parts[1]) if parts[0] == "blk" else None


def map_hf_name(name: str, tensor_map: TensorNameMap, spec: ArchSpec) -> MappedName | None:
    """The GGUF tensor an HF tensor becomes, or None when the architecture has no such tensor."""
    match = EXPERT_NAME.match(name)
    if match:
        found = tensor_map.get_type_and_name(f"{match['prefix']}.{match['w']}",
                                             try_suffixes=(".weight",))
        if found is None:
            found = tensor_map.get_type_and_name(f"{match['prefix']}.{match['w']}.weight",
                                                 try_suffixes=(".weight",))
        if found is None or found[0] not in EXPERT_KINDS:
            return None
        kind, gguf_name = found
        if not gguf_name.endswith(".weight"):
            gguf_name += ".weight"
        return _checked(MappedName(gguf_name, kind, int(match["xid"])), spec)
    found = tensor_map.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
    if found is None:
        return None
    return _checked(MappedName(found[1], found[0]), spec)


def _checked(mapped: MappedName, spec: ArchSpec) -> MappedName | None:
    return mapped if mapped.kind in MODEL_TENSORS[spec.gguf_arch] else None


def expected_shape(mapped: MappedName, hyper: Hyper, is_bias: bool) -> tuple[int, ...] | None:
    """The PyTorch shape an HF tensor must have (per expert for expert tensors), if known."""
    q_rows = hyper.n_head * hyper.head_dim
    kv_rows = hyper.n_head_kv * hyper.head_dim
    n_ff_expert = hyper.n_ff_expert or hyper.n_ff
    n_ff_shared = hyper.n_ff_shared or hyper.n_ff
    e, vocab = hyper.n_embd, hyper.vocab_size
    table: dict[MODEL_TENSOR, tuple[int, ...]] = {
        MODEL_TENSOR.TOKEN_EMBD: (vocab, e),
        MODEL_TENSOR.OUTPUT: (vocab, e),
        MODEL_TENSOR.OUTPUT_NORM: (e,),
        MODEL_TENSOR.ATTN_NORM: (e,),
        MODEL_TENSOR.FFN_NORM: (e,),
        MODEL_TENSOR.ATTN_Q: (q_rows, e),
        MODEL_TENSOR.ATTN_K: (kv_rows, e),
        MODEL_TENSOR.ATTN_V: (kv_rows, e),
        MODEL_TENSOR.ATTN_OUT: (e, q_rows),
        MODEL_TENSOR.FFN_GATE: (hyper.n_ff, e),
        MODEL_TENSOR.FFN_UP: (hyper.n_ff, e),
        MODEL_TENSOR.FFN_DOWN: (e, hyper.n_ff),
        MODEL_TENSOR.FFN_GATE_INP: (hyper.n_expert, e),
        MODEL_TENSOR.FFN_GATE_EXP: (n_ff_expert, e),
        MODEL_TENSOR.FFN_UP_EXP: (n_ff_expert, e),
        MODEL_TENSOR.FFN_DOWN_EXP: (e, n_ff_expert),
        MODEL_TENSOR.FFN_GATE_SHEXP: (n_ff_shared, e),
        MODEL_TENSOR.FFN_UP_SHEXP: (n_ff_shared, e),
        MODEL_TENSOR.FFN_DOWN_SHEXP: (e, n_ff_shared),
        MODEL_TENSOR.FFN_GATE_INP_SHEXP: (1, e),
    }
    shape = table.get(mapped.kind)
    if shape is None:
        return None
    return shape[:1] if is_bias else shape
