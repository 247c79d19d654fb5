"""Plan GGUF → HF safetensors: HF names, inverse Q/K permutation, experts un-stacked, config.

The HF config comes from transformers' own GGUF metadata mapping (`load_gguf_checkpoint`, what
`from_pretrained(gguf_file=...)` uses); the HF tensor names from the parameters of that model
(built on the meta device, no memory) matched through gguf-py's TensorNameMap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

from app.core.convert.hf_arch import ARCHITECTURES, ArchSpec
from app.core.convert.hf_names import EXPERT_KINDS
from app.core.convert.plan import ConversionPlan, Device, HFOutput, SourceSlice, TensorPlan
from app.core.convert.plan_gguf import gguf_slice, main_header, read_headers, torch_shape
from app.core.errors import BadInputError, FormatError, OptionFact, UnsupportedError
from app.core.formats.gguf_header import GGUFHeader, GGUFTensorEntry
from app.core.formats.model_info import ModelInfo
from app.core.quant import can_dequantize, get_type

# Tensors llama.cpp's converter generates from the config; transformers recomputes them.
GENERATED = frozenset({"rope_freqs.weight"})
EXPERT_WEIGHT_NAMES = ("w1", "w2", "w3", "gate_proj", "up_proj", "down_proj")


def _spec_for(header: GGUFHeader, has_experts: bool, config: dict[str, Any]) -> ArchSpec:
    arch = header.architecture
    by_gguf = {s.gguf_name: s for s in ARCHITECTURES.values()}
    if arch not in by_gguf:
        raise UnsupportedError(f"architecture {arch!r} cannot be converted to Hugging Face "
                               "safetensors", path=header.path,
                               hint=f"supported: {', '.join(sorted(by_gguf))}")
    if arch == MODEL_ARCH_NAMES[ARCHITECTURES["llama"].gguf_arch]:
        if has_experts:
            return ARCHITECTURES["mixtral"]
        return ARCHITECTURES.get(str(config.get("model_type")), ARCHITECTURES["llama"])
    return by_gguf[arch]


def hf_config(path: Path, has_experts: bool, header: GGUFHeader) -> tuple[Any, ArchSpec]:
    """A transformers config object for the GGUF at `path`."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    except (ValueError, KeyError) as exc:
        raise UnsupportedError(f"transformers cannot read this GGUF's configuration ({exc})",
                               path=path) from None
    spec = _spec_for(header, has_experts, parsed)
    parsed.pop("_model_name_or_path", None)
    parsed["model_type"] = spec.model_type
    if spec.moe and "num_local_experts" not in parsed and "num_experts" not in parsed:
        parsed["num_local_experts"] = header.arch_field("expert_count")
    # Keys transformers' GGUF mapping leaves out for Qwen2-MoE (it would use its defaults).
    for key, name in (("expert_feed_forward_length", "moe_intermediate_size"),
                      ("expert_shared_feed_forward_length", "shared_expert_intermediate_size")):
        value = header.arch_field(key)
        if spec.model_type == "qwen2_moe" and isinstance(value, int):
            parsed.setdefault(name, value)
    config = transformers.AutoConfig.for_model(**parsed)
    config.architectures = [type(config).__name__.replace("Config", "ForCausalLM")]
    return config, spec


def hf_names(config: Any, spec: ArchSpec) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(GGUF name → HF name, GGUF stacked-expert name → HF per-expert pattern with {xid},
    HF parameters the model has) for this config."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = set(model.state_dict())
    tensor_map = get_tensor_name_map(spec.gguf_arch, config.num_hidden_layers)
    names: dict[str, str] = {}
    for hf_name in params:
        base, _, suffix = hf_name.rpartition(".")
        found = tensor_map.get_type_and_name(base)
        if found is not None and suffix in ("weight", "bias"):
            names[f"{found[1]}.{suffix}"] = hf_name
    experts: dict[str, str] = {}
    if spec.moe:
        for candidate, (kind, gguf_base) in tensor_map.mapping.items():
            if kind not in EXPERT_KINDS or f".{spec.expert_prefix}." not in f".{candidate}":
                continue
            prefix, _, weight = candidate.rpartition(".")
            if weight in EXPERT_WEIGHT_NAMES and prefix.endswith(spec.expert_prefix):
                experts.setdefault(f"{gguf_base}.weight", f"{prefix}.{{xid}}.{weight}.weight")
    return names, experts, params


def plan_gguf_to_hf(model: ModelInfo, target: Path, out_type: str, device: Device,
                    overwrite: bool, require_tokenizer: bool) -> ConversionPlan:
    headers = read_headers(model)
    main = main_header(headers)
    entries = [(e, h.path) for h in headers for e in h.tensors]
    has_experts = any(len(e.shape) == 3 and e.name.endswith("_exps.weight") for e, _ in entries)
    config, spec = hf_config(main.path, has_experts, main)
    names, expert_names, params = hf_names(config, spec)
    n_head = int(main.arch_field("attention.head_count") or config.num_attention_heads)
    n_head_kv = int(main.arch_field("attention.head_count_kv") or n_head)
    tensors: list[TensorPlan] = []
    notes: list[str] = []
    warnings: list[str] = []
    for entry, path in entries:
        if entry.name in GENERATED:
            notes.append(f"{entry.name} not written: transformers computes it from config.json")
            continue
        if not can_dequantize(entry.type_name):
            raise UnsupportedError(f"cannot read {entry.type_name} tensors", path=path,
                                   tensor=entry.name)
        if entry.name in expert_names and len(entry.shape) == 3:
            tensors.extend(_unstack(entry, path, expert_names[entry.name], out_type))
            continue
        hf_name = names.get(entry.name)
        if hf_name is None:
            raise UnsupportedError(f"has no counterpart in transformers' {spec.model_type} "
                                   "model", path=path, tensor=entry.name)
        tensors.append(_plain(entry, path, hf_name, out_type, spec, n_head, n_head_kv))
    written = {t.name for t in tensors}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [p for p in sorted(params) if p in names.values() and p not in written
               and not (tied and p == "lm_head.weight")]
    if missing:
        raise FormatError(f"the GGUF has no tensor for {missing[0]}", path=model.path)
    tokenizer_model = main.get("tokenizer.ggml.model")
    hf_files = ["config.json", "generation_config.json"]
    reason = _tokenizer_problem(main, tokenizer_model)
    if reason is None:
        hf_files += ["tokenizer.json", "tokenizer_config.json"]
        notes.append(f"tokenizer: {tokenizer_model} "
                     f"(pre-tokenizer {main.get('tokenizer.ggml.pre', 'default')!r}) → "
                     "tokenizer.json")
    else:
        if require_tokenizer:
            raise BadInputError(reason, path=model.path,
                                hint="convert without requiring a tokenizer",
                                option=OptionFact("require_tokenizer", False))
        warnings.append(f"{reason}: the HF folder has weights and config only")
    return ConversionPlan(
        source=model.path, source_format="gguf", target=target, to="hf", out_type=out_type,
        architecture=spec.model_type, tensors=tuple(tensors), device=device,
        overwrite=overwrite, hf_files=tuple(hf_files),
        input_bytes=model.file_size, notes=tuple(notes), warnings=tuple(warnings),
        metadata_bytes=64 * len(tensors),
        hf_output=HFOutput(config.to_dict(), through_transformers=True,
                           tokenizer_from_gguf=main.path if "tokenizer.json" in hf_files
                           else None),
        loads_transformers=True)


def _tokenizer_problem(main: GGUFHeader, tokenizer_model: object) -> str | None:
    """Why no tokenizer.json can be written, or None when one can (built once to check)."""
    if tokenizer_model is None:
        return "the GGUF has no tokenizer"
    if tokenizer_model not in ("gpt2", "llama"):
        return f"tokenizer type {tokenizer_model!r} cannot be written as tokenizer.json"
    from app.core.convert.hf_tokenizer import build_tokenizer

    try:
        build_tokenizer(main.path)
    except FormatError as exc:
        return exc.reason
    return None


def _hf_bytes(shape: tuple[int, ...], out_type: str) -> int:
    count = math.prod(shape)
    return count * get_type(out_type).type_size


def _plain(entry: GGUFTensorEntry, path: Path, hf_name: str, out_type: str, spec: ArchSpec,
           n_head: int, n_head_kv: int) -> TensorPlan:
    shape = torch_shape(entry)
    piece = gguf_slice(entry, path)
    permute, heads = "", 0
    if spec.permute_qk and (".attn_q." in entry.name or ".attn_k." in entry.name):
        permute = "unqk"
        heads = n_head if ".attn_q." in entry.name else n_head_kv
        if len(shape) == 1:  # a bias: its elements are permuted like rows
            piece = SourceSlice(path, entry.name, entry.offset, entry.shape[0], 1,
                                entry.n_bytes // entry.shape[0], entry.type_name)
    if hf_name.endswith("mlp.gate.weight") or ".ffn_gate_inp_shexp" in entry.name:
        # transformers keeps these 2-D; a GGUF may store a 1-row router as 1-D
        shape = shape if len(shape) == 2 else (1, shape[0])
    note = f"inverse Q/K permutation ({heads} heads)" if permute else None
    copy = not permute and entry.type_name == out_type
    return TensorPlan(hf_name, out_type, shape, _hf_bytes(shape, out_type), (piece,),
                      permute=permute, n_head=heads, copy=copy, note=note)  # type: ignore[arg-type]


def _unstack(entry: GGUFTensorEntry, path: Path, pattern: str, out_type: str
             ) -> list[TensorPlan]:
    n_expert, rows, length = torch_shape(entry)
    whole = gguf_slice(entry, path)
    per_expert = rows * whole.row_bytes
    plans = []
    for xid in range(n_expert):
        piece = SourceSlice(path, entry.name, entry.offset + xid * per_expert, rows, length,
                            whole.row_bytes, entry.type_name, take_of=entry.name)
        shape = (rows, length)
        plans.append(TensorPlan(pattern.format(xid=xid), out_type, shape,
                                _hf_bytes(shape, out_type), (piece,),
                                copy=entry.type_name == out_type,
                                note=f"expert {xid} of {entry.name}"))
    return plans

