"""Which GGML type each tensor gets for a target: llama.cpp's `llama_tensor_get_type`
(src/llama-quant.cpp) for the llama family, dense and MoE, and what the result weighs.

llama.cpp walks the tensors in its loader's order (by layer, then by name) and counts attn_v
and ffn_down tensors as it goes; some rules depend on those counts, so `plan_tensor_types`
does the same walk. Only the rules for the targets in `targets.TARGETS` are modelled (no
imatrix, no IQ mixes); per-tensor overrides are applied where llama.cpp applies them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cache

from app.core.errors import UnsupportedError
from app.core.quant.overrides import TypeOverrides
from app.core.quant.specs import ModelHparams, TensorLike, TensorSpec, as_tensor_spec
from app.core.quant.targets import Target, get_target
from app.core.quant.types import TYPES, QuantType, can_quantize, fitting_type, get_type

GGUF_ALIGNMENT = 32  # general.alignment's default: each tensor's data starts on it


class Category(Enum):
    """tensor_get_category(): broad roles, found by substrings in this order."""

    OUTPUT = "output"
    TOKEN_EMBD = "token_embd"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_Q = "attn_q"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OTHER = "other"


_CATEGORY_PATTERNS = [
    (Category.ATTENTION_QKV, "attn_qkv.weight"), (Category.ATTENTION_KV_B, "attn_kv_b.weight"),
    (Category.ATTENTION_V, "attn_v.weight"), (Category.ATTENTION_K, "attn_k.weight"),
    (Category.ATTENTION_Q, "attn_q.weight"), (Category.ATTENTION_OUTPUT, "attn_output.weight"),
    (Category.FFN_UP, "ffn_up"), (Category.FFN_GATE, "ffn_gate"), (Category.FFN_DOWN, "ffn_down"),
]
_ATTN_V_LIKE = {Category.ATTENTION_V, Category.ATTENTION_QKV, Category.ATTENTION_KV_B}

# tensor_allows_quantization(): names that stay in their source type whatever the target.
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
    "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
    "mm.a.code_embd",
    *(f"time_mix_{n}.weight" for n in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1",
                                       "a2", "g1", "g2", "decay_w1", "decay_w2", "lerp_fused")),
)
# Architectures for which llama.cpp has rules of its own that are not modelled here.
_SPECIAL_ARCHS = {"falcon", "glm5-next", "bailingmoe3"}
# The architectures whose loaders call a model of this many layers LLM_TYPE_70B (src/models/).
_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}
_LAYER = re.compile(r"blk\.\s*([+-]?\d+)")


@cache
def category_of(name: str) -> Category:
    if name == "output.weight":
        return Category.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return Category.TOKEN_EMBD
    for category, pattern in _CATEGORY_PATTERNS:
        if pattern in name:
            return category
    return Category.OTHER


def allows_quantization(spec: TensorSpec) -> bool:
    """Whether llama.cpp gives this tensor the target's types (1-D tensors, norms and the MoE
    router keep their own type)."""
    return spec.n_dims >= 2 and _quantizable_name(spec.name)


@cache
def _quantizable_name(name: str) -> bool:
    # Cached: planning asks about the same names again and again (every target, every model
    # shape `types_a_target_can_choose` tries).
    return (name.endswith("weight") and name not in ("position_embd.weight", "token_types.weight")
            and not any(part in name for part in _NEVER_QUANTIZED))


def layer_of(name: str) -> int | None:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # GGUF ne order
    type: QuantType
    quantized: bool  # False: the tensor keeps its source type (norms, biases, router)
    note: str | None = None  # a fallback llama.cpp would log, for the job's log

    @property
    def n_elements(self) -> int:
        return TensorSpec(self.name, self.shape).n_elements

    @property
    def n_bytes(self) -> int:
        return self.n_elements // self.type.block_size * self.type.type_size

    @property
    def can_write(self) -> bool:
        return not self.quantized or can_quantize(self.type)


@dataclass(frozen=True)
class ModelPlan:
    target: Target
    tensors: tuple[TensorPlan, ...]
    approximate: str | None = None  # why the plan may differ from llama.cpp's, if it may

    def type_of(self, name: str) -> QuantType:
        return next(t.type for t in self.tensors if t.name == name)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        """Bytes of all tensor data, without padding."""
        return sum(t.n_bytes for t in self.tensors)

    def data_bytes(self, alignment: int = GGUF_ALIGNMENT) -> int:
        """Size of the GGUF data section: each tensor padded to `alignment`. The file adds its
        header (metadata, tokenizer, tensor table) on top."""
        return sum(-(-t.n_bytes // alignment) * alignment for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight over every tensor, norms included."""
        return 8 * self.tensor_bytes / self.n_elements if self.n_elements else 0.0

    @property
    def type_counts(self) -> dict[str, int]:
        return dict(Counter(t.type.name for t in self.tensors))

    @property
    def writable(self) -> bool:
        return all(t.can_write for t in self.tensors)

    @property
    def unwritable_types(self) -> list[str]:
        return sorted({t.type.name for t in self.tensors if not t.can_write})

    @property
    def fallbacks(self) -> list[str]:
        return [t.note for t in self.tensors if t.note]


@dataclass
class _Walk:
    """quantize_state_impl: the counters llama.cpp keeps while it walks the tensors."""

    target: Target
    hp: ModelHparams
    tied: bool
    n_attention_wv: int
    output_type: QuantType | None = None  # --output-tensor-type
    i_attention_wv: int = 0
    counters: dict[Category, int] = field(default_factory=Counter)

    def layer(self, category: Category, name: str) -> tuple[int, int]:
        """layer_info(): with experts the layer comes from the name, else from the count."""
        i_layer = self.counters[category]
        if self.hp.n_expert > 1:
            found = layer_of(name)
            if found is None or not 0 <= found < self.hp.n_layer:
                raise UnsupportedError(f"cannot tell which of the {self.hp.n_layer} layers "
                                       "this expert tensor belongs to", tensor=name)
            i_layer = found
        self.counters[category] += 1
        return i_layer, self.hp.n_layer

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, which each architecture's loader decides from its layer
        count (a llama with as many KV heads as heads is the 65B; 8 experts are 8x7B/8x22B)."""
        hp = self.hp
        if _70B_LAYERS.get(hp.arch) != hp.n_layer:
            return False
        return hp.arch != "llama" or (hp.n_head != hp.n_head_kv and hp.n_expert != 8)

    def choose(self, spec: TensorSpec, category: Category, qtype: QuantType) -> QuantType:
        """llama_tensor_get_type_impl() for the targets of targets.TARGETS."""
        mix, hp = self.target.name, self.hp
        if category is Category.OUTPUT or (self.tied and category is Category.TOKEN_EMBD):
            if self.output_type is not None:
                return self.output_type
            if spec.n_per_row % qtype.block_size:
                return T["Q8_0"]
            return qtype if qtype == T["Q8_0"] else T["Q6_K"]
        if category in _ATTN_V_LIKE:
            i = self.i_attention_wv
            if mix == "Q2_K":
                qtype = T["Q4_K"] if hp.n_gqa >= 4 else T["Q3_K"]
            elif mix == "Q3_K_M":
                qtype = T["Q5_K"] if i < 2 else T["Q4_K"]
            elif mix == "Q3_K_L":
                qtype = T["Q5_K"]
            elif mix in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, self.n_attention_wv):
                qtype = T["Q6_K"]
            elif mix == "Q4_K_S" and i < 4:
                qtype = T["Q5_K"]
            if self.is_70b and qtype in (T["Q3_K"], T["Q4_K"]):
                qtype = T["Q5_K"]  # 8 heads share attn_v: more bits for a small price
            if hp.n_expert == 8:
                qtype = T["Q8_0"]
            self.i_attention_wv += 1
        elif category is Category.ATTENTION_K:
            if hp.n_expert == 8:
                qtype = T["Q8_0"]
        elif category is Category.FFN_DOWN:
            i_layer, n_layer = self.layer(category, spec.name)
            more_bits = use_more_bits(i_layer, n_layer)
            if mix == "Q2_K":
                qtype = T["Q3_K"]
            elif mix == "Q3_K_M":
                qtype = T["Q5_K"] if i_layer < n_layer // 16 else T["Q4_K"]
            elif mix == "Q3_K_L":
                qtype = T["Q5_K"]
            elif mix in ("Q4_K_M", "Q5_K_M") and more_bits:
                qtype = T["Q6_K"]
            elif mix == "Q4_K_S" and i_layer < n_layer // 8:
                qtype = T["Q5_K"]
        elif category is Category.ATTENTION_OUTPUT:
            if hp.n_expert == 8:
                if mix in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    qtype = T["Q5_K"]
            else:
                qtype = {"Q2_K": T["Q3_K"], "Q3_K_M": T["Q4_K"],
                         "Q3_K_L": T["Q5_K"]}.get(mix, qtype)
        elif category is Category.ATTENTION_QKV:
            qtype = {"Q3_K_M": T["Q4_K"], "Q3_K_L": T["Q4_K"], "Q4_K_M": T["Q5_K"],
                     "Q5_K_M": T["Q6_K"]}.get(mix, qtype)
        elif category in (Category.FFN_GATE, Category.FFN_UP):
            self.layer(category, spec.name)  # only IQ3_XS mixes act on it; the check still runs
        return qtype


T = TYPES


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The first and last eighth of the layers, and every third one between them."""
    return (i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8
            or (i_layer - n_layers // 8) % 3 == 2)  # never negative when evaluated


def _loader_order(spec: TensorSpec) -> tuple[int, bytes]:
    """llama_model_loader's weight_name_comparer: by block number (-1 outside blocks), then by
    name."""
    layer = layer_of(spec.name)
    return (-1 if layer is None else layer, spec.name.encode())


def plan_tensor_types(target: str | Target, tensors: Iterable[TensorLike],
                      hparams: ModelHparams, *, pure: bool = False,
                      overrides: TypeOverrides | None = None) -> ModelPlan:
    """The GGML type llama-quantize gives each tensor for `target` (no imatrix).

    `tensors` are GGUF names with shapes in GGUF order (TensorSpec, (name, shape) pairs, or
    the entries of a GGUF header). `pure` is llama-quantize's --pure: every quantizable tensor
    gets the target's default type (still falling back when its rows do not fit).
    `overrides` are its --tensor-type, --output-tensor-type and --token-embedding-type.
    """
    target = get_target(target)
    overrides = overrides or TypeOverrides()
    specs = [as_tensor_spec(t) for t in tensors]
    categories = [category_of(s.name) for s in specs]
    walk = _Walk(target, hparams,
                 tied=Category.OUTPUT not in categories,
                 n_attention_wv=sum(c in _ATTN_V_LIKE for c in categories),
                 output_type=overrides.output)
    plans: dict[int, TensorPlan] = {}
    for index in sorted(range(len(specs)), key=lambda i: _loader_order(specs[i])):
        spec, category = specs[index], categories[index]
        if not allows_quantization(spec):
            plans[index] = TensorPlan(spec.name, spec.shape, get_type(spec.type), False)
            continue
        direct = overrides.direct_type(spec.name, category is Category.TOKEN_EMBD,
                                       category is Category.OUTPUT)
        if direct is not None:
            plans[index] = TensorPlan(spec.name, spec.shape, direct, True)
            continue
        qtype, note = target.default_type, None
        if qtype.is_quantized:
            rule = overrides.matching_rule(spec.name)
            if rule is not None:
                # A manual type skips the mix rules, and with them their counters.
                qtype = rule.type
            elif not pure:
                qtype = walk.choose(spec, category, qtype)
            choice = fitting_type(qtype, spec.n_per_row, spec.name)
            qtype, note = choice.chosen, choice.reason
        plans[index] = TensorPlan(spec.name, spec.shape, qtype, True, note)
    approximate = None
    if hparams.arch in _SPECIAL_ARCHS and target.is_mix and not pure:
        approximate = f"llama.cpp has type rules of its own for {hparams.arch} models"
    return ModelPlan(target, tuple(plans[i] for i in range(len(specs))), approximate)


# Every type the rules of `_Walk.choose` can name besides the target's own.
RULE_TYPES = frozenset({"Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"})


def types_a_plan_can_give(target: Target) -> frozenset[str]:
    """A superset of types_a_target_can_choose(target) found without planning (which takes
    most of a second for all targets): the target's type, the rules' types, and the types
    llama.cpp falls back to for rows that fit none of them."""
    found = {target.default_type.name, *RULE_TYPES}
    for name in list(found):
        for n_per_row in (32, 1):  # rows that fit 32-element blocks only, and no block type
            try:
                found.add(fitting_type(name, n_per_row).chosen.name)
            except UnsupportedError:
                continue
    return frozenset(found)


def types_a_target_can_choose(target: Target) -> frozenset[str]:
    """Every type `target` gives some weight of some llama-family model: plans for dense and
    8-expert models, GQA and not, 70B-like, with rows that fit 256-element blocks and not."""
    from app.core.quant.specs import llama_tensor_specs

    found: set[str] = set()
    models = [(16, 4, 4, 0), (16, 4, 1, 0), (80, 8, 1, 0), (16, 4, 1, 8)]
    for n_embd in (256, 96):  # 96 fits 32-element blocks only
        for n_layer, n_head, n_head_kv, n_expert in models:
            specs = llama_tensor_specs(n_layer=n_layer, n_embd=n_embd, n_ff=2 * n_embd,
                                       n_head=n_head, n_head_kv=n_head_kv, n_vocab=64,
                                       n_expert=n_expert, attention_bias=True)
            hparams = ModelHparams(n_layer, n_head, n_head_kv, n_expert)
            for tied in (False, True):
                used = [s for s in specs if not (tied and s.name == "output.weight")]
                plan = plan_tensor_types(target, used, hparams)
                found.update(t.type.name for t in plan.tensors if t.quantized)
    return frozenset(found)
