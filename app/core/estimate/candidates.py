"""The GGUFs a model could become: every target's tensor types as llama-quantize would choose
them, as a ModelInfo the run estimate can judge like a file on disk.

For a GGUF source the tensors are its own; for an HF checkpoint they are the converter's own
tensor program (bitsandbytes weights at their dequantized shapes). A checkpoint the converter
cannot read gets a llama-family layout from its config.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.core.errors import ModelyardError
from app.core.estimate.shape import ModelShape, model_shape
from app.core.estimate.verdict import Candidate, quality_rank
from app.core.formats.model_info import ModelInfo, TensorInfo
from app.core.quant import TARGETS, ModelHparams, TensorSpec, llama_tensor_specs, plan_tensor_types

# HF model_type → the GGUF architecture llama.cpp loads it as.
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "mixtral": "llama", "qwen2": "qwen2",
             "qwen2_moe": "qwen2moe"}


def _hf_specs(shape: ModelShape, model: ModelInfo) -> list[TensorSpec]:
    head_dim = shape.head_dim_k or None
    return llama_tensor_specs(
        n_layer=shape.n_layer, n_embd=shape.n_embd, n_ff=shape.n_ff, n_head=shape.n_head,
        n_head_kv=shape.n_head_kv[0] if shape.n_head_kv else shape.n_head,
        n_vocab=shape.n_vocab, head_dim=head_dim, n_expert=shape.n_experts,
        tied_embeddings=shape.tied_embeddings,
        attention_bias=any(t.name.endswith("q_proj.bias") for t in model.tensors))


def _converter_program(model: ModelInfo) -> tuple[list[TensorSpec], ModelHparams] | None:
    """The tensors the converter would write (names, shapes, fixed F32 ones) and its type
    hyperparameters, from its own plan; None for a checkpoint it cannot convert."""
    from app.core.convert.plan_hf import hf_gguf_tensors

    try:
        program = hf_gguf_tensors(model)
    except ModelyardError:
        return None
    specs = [TensorSpec(t.name, tuple(reversed(t.shape)), "F32") for t in program.tensors]
    return specs, program.hparams


def _gguf_metadata(shape: ModelShape, arch: str) -> dict[str, Any]:
    """The GGUF keys the run estimate reads, as the converter would write them."""
    meta: dict[str, Any] = {
        "general.architecture": arch,
        f"{arch}.block_count": shape.n_layer,
        f"{arch}.embedding_length": shape.n_embd,
        f"{arch}.feed_forward_length": shape.n_ff,
        f"{arch}.attention.head_count": shape.n_head,
        f"{arch}.attention.head_count_kv": list(shape.n_head_kv),
        f"{arch}.attention.key_length": shape.head_dim_k,
        f"{arch}.attention.value_length": shape.head_dim_v,
        f"{arch}.vocab_size": shape.n_vocab,
    }
    if shape.n_ctx_train:
        meta[f"{arch}.context_length"] = shape.n_ctx_train
    if shape.n_experts:
        meta[f"{arch}.expert_count"] = shape.n_experts
        meta[f"{arch}.expert_used_count"] = shape.n_experts_used
    return meta


def keep_candidate(model: ModelInfo) -> Candidate:
    """The file as it is: no conversion, no new quantization error."""
    return Candidate(f"{model.quantization or '?'} (keep this file)", model.quantization or "?",
                     model, writable=True, existing=True, keep=True)


def conversion_candidates(model: ModelInfo, writable_only: bool = False) -> list[Candidate]:
    """The ways to get this model: a GGUF as it is first, then one candidate per target it
    could be converted or requantized to."""
    if model.fatal_problems or model.format == "pickle" or not model.tensors:
        return []
    shape = model_shape(model)
    if shape.n_layer <= 0:
        return []
    if model.format == "gguf":
        specs: list[Any] = list(model.tensors)
        arch = model.architecture or "llama"
        metadata = dict(model.metadata)
        source_quant: str | None = model.quantization or "F32"
    else:
        if not shape.n_embd or not shape.n_head:
            return []
        arch = GGUF_ARCH.get(model.architecture or "", model.architecture or "llama")
        specs = _hf_specs(shape, model)
        source_quant = None
    hparams = ModelHparams(shape.n_layer, shape.n_head,
                           shape.n_head_kv[0] if shape.n_head_kv else 0, shape.n_experts, arch)
    if model.format == "hf":
        program = _converter_program(model)
        if program is not None:
            specs, hparams = program
            arch = hparams.arch
        metadata = _gguf_metadata(shape, arch)
    candidates = [keep_candidate(model)] if model.format == "gguf" else []
    for target in TARGETS.values():
        if source_quant is not None and quality_rank(target.name) == quality_rank(source_quant):
            continue  # the same type again is the file as it is
        plan = plan_tensor_types(target, specs, hparams)
        if writable_only and not plan.writable:
            continue
        tensors = tuple(TensorInfo(t.name, t.type.name, t.shape, t.n_bytes, t.n_elements)
                        for t in plan.tensors)
        name = f"{model.name}-{target.name}"
        planned = replace(model, name=name, format="gguf", architecture=arch, tensors=tensors,
                          file_size=plan.data_bytes(), quantization=target.name,
                          metadata=metadata, problems=())
        # The quant most people pick: the default for a model that is not quantized yet.
        unquantized = source_quant is None or quality_rank(source_quant) <= quality_rank("BF16")
        preferred = target.name == "Q4_K_M" and unquantized
        candidates.append(Candidate(f"{target.name} (convert)", target.name, planned,
                                    writable=plan.writable, source_quant=source_quant,
                                    preferred=preferred))
    return candidates
