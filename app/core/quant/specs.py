"""What the type planner needs to know about a model: its tensors (GGUF names and shapes) and
the few hyperparameters llama.cpp's type rules look at."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.core.errors import FormatError, OptionError

if TYPE_CHECKING:
    from app.core.formats.gguf_header import GGUFHeader


@dataclass(frozen=True)
class TensorSpec:
    name: str  # GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # GGUF ne order: shape[0] is the row length
    type: str = "F32"  # its type in the source; tensors that are not quantized keep it

    @property
    def n_per_row(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_dims(self) -> int:
        """ggml_n_dims(): trailing dimensions of size 1 do not count."""
        dims = [i for i, size in enumerate(self.shape) if size > 1]
        return dims[-1] + 1 if dims else 1


@dataclass(frozen=True)
class ModelHparams:
    """The hyperparameters llama.cpp's llama_tensor_get_type() reads."""

    n_layer: int
    n_head: int = 0
    n_head_kv: int = 0
    n_expert: int = 0
    arch: str = "llama"

    def __post_init__(self) -> None:
        if self.n_layer <= 0:
            raise OptionError(f"a model needs at least one layer, got n_layer={self.n_layer}")
        if min(self.n_head, self.n_head_kv, self.n_expert) < 0:
            raise OptionError("head and expert counts cannot be negative")

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


TensorLike = TensorSpec | tuple[str, Sequence[int]] | Any


def as_tensor_spec(item: TensorLike) -> TensorSpec:
    """A TensorSpec from a TensorSpec, a (name, ne-shape) pair, or anything with `name` and
    `shape` in GGUF order plus a type (GGUFTensorEntry, formats' TensorInfo)."""
    if isinstance(item, TensorSpec):
        return item
    if isinstance(item, tuple):
        name, shape = item
        return TensorSpec(name, tuple(int(d) for d in shape))
    type_name = getattr(item, "type_name", None) or getattr(item, "type", None) or "F32"
    return TensorSpec(item.name, tuple(int(d) for d in item.shape), str(type_name))


def _first(value: Any, default: int = 0) -> int:
    # Some models store per-layer head counts as arrays; llama.cpp's rules read layer 0.
    if isinstance(value, (list, tuple)):
        value = value[0] if value else default
    return int(value) if value is not None else default


def gguf_hparams(header: GGUFHeader) -> ModelHparams:
    """The planner's hyperparameters from a GGUF header (formats.gguf_header)."""
    n_layer = _first(header.arch_field("block_count"), 0)
    if n_layer <= 0:
        raise FormatError("the GGUF metadata has no block count, so llama.cpp's per-layer type "
                          "rules cannot be applied", path=header.path,
                          hint="add {arch}.block_count or choose a non-mix type")
    return ModelHparams(
        n_layer=n_layer,
        n_head=_first(header.arch_field("attention.head_count")),
        n_head_kv=_first(header.arch_field("attention.head_count_kv")),
        n_expert=_first(header.arch_field("expert_count")),
        arch=header.architecture or "llama",
    )


def gguf_tensor_specs(header: GGUFHeader) -> list[TensorSpec]:
    return [TensorSpec(t.name, t.shape, t.type_name) for t in header.tensors]


def llama_tensor_specs(*, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
                       n_vocab: int, head_dim: int | None = None, n_expert: int = 0,
                       tied_embeddings: bool = False, attention_bias: bool = False,
                       expert_layout: Literal["stacked", "split"] = "stacked",
                       ) -> list[TensorSpec]:
    """The GGUF tensors llama.cpp's converter writes for a Llama/Mistral/Qwen2/Mixtral model,
    from its hyperparameters: what the size estimate of a model not yet converted is based on."""
    head_dim = head_dim or n_embd // n_head
    q_rows, kv_rows = n_head * head_dim, n_head_kv * head_dim
    specs = [TensorSpec("token_embd.weight", (n_embd, n_vocab))]
    for layer in range(n_layer):
        blk = f"blk.{layer}"
        specs += [TensorSpec(f"{blk}.attn_norm.weight", (n_embd,)),
                  TensorSpec(f"{blk}.attn_q.weight", (n_embd, q_rows)),
                  TensorSpec(f"{blk}.attn_k.weight", (n_embd, kv_rows)),
                  TensorSpec(f"{blk}.attn_v.weight", (n_embd, kv_rows))]
        if attention_bias:
            specs += [TensorSpec(f"{blk}.attn_q.bias", (q_rows,)),
                      TensorSpec(f"{blk}.attn_k.bias", (kv_rows,)),
                      TensorSpec(f"{blk}.attn_v.bias", (kv_rows,))]
        specs += [TensorSpec(f"{blk}.attn_output.weight", (q_rows, n_embd)),
                  TensorSpec(f"{blk}.ffn_norm.weight", (n_embd,))]
        ffn = {"gate": (n_embd, n_ff), "up": (n_embd, n_ff), "down": (n_ff, n_embd)}
        if not n_expert:
            specs += [TensorSpec(f"{blk}.ffn_{kind}.weight", shape) for kind, shape in ffn.items()]
            continue
        specs.append(TensorSpec(f"{blk}.ffn_gate_inp.weight", (n_embd, n_expert)))
        for kind, shape in ffn.items():
            if expert_layout == "stacked":
                specs.append(TensorSpec(f"{blk}.ffn_{kind}_exps.weight", (*shape, n_expert)))
            else:
                specs += [TensorSpec(f"{blk}.ffn_{kind}.{e}.weight", shape)
                          for e in range(n_expert)]
    specs.append(TensorSpec("output_norm.weight", (n_embd,)))
    if not tied_embeddings:
        specs.append(TensorSpec("output.weight", (n_embd, n_vocab)))
    return specs
