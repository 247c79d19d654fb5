"""Plan HF safetensors → GGUF: names, types, Q/K permutation, stacked experts, metadata."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import GGML_QUANT_VERSION, MODEL_TENSOR, get_tensor_name_map

from app.core.convert import hf_arch, tokenizer
from app.core.convert.bnb_inputs import bnb_notes, find_bnb_weights
from app.core.convert.hf_names import (
    IGNORED_SUFFIXES,
    QK_KINDS,
    MappedName,
    expected_shape,
    map_hf_name,
)
from app.core.convert.metadata import entries_of, recording_writer
from app.core.convert.plan import ConversionPlan, Device, SourceSlice, TensorPlan, TypeRules
from app.core.convert.tensor_types import assign_types, file_type_of
from app.core.errors import FormatError, UnsupportedError
from app.core.formats.hf_config import model_type
from app.core.formats.model_info import ModelInfo
from app.core.formats.safetensors_header import SafetensorsEntry, read_safetensors_header
from app.core.quant import ModelHparams
from app.core.quant.overrides import TypeOverrides

READABLE_DTYPES = ("F32", "F16", "BF16")
BNB_QUANTIZATIONS = ("bnb-nf4", "bnb-fp4", "bnb-int8")


@dataclass(frozen=True)
class Source:
    """A stored HF tensor: plain (read as rows of `entry`) or bitsandbytes (`piece` with its
    companions, `shape` the logical one)."""

    entry: SafetensorsEntry
    file: Path
    logical_shape: tuple[int, ...] | None = None
    piece: SourceSlice | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.logical_shape or self.entry.shape

    @property
    def dtype(self) -> str:
        return self.piece.dtype if self.piece is not None else self.entry.dtype


def stored_rows(entry: SafetensorsEntry, path: Path, as_column: bool = False) -> SourceSlice:
    """The entry as rows: matrices by their last dimension; a 1-D tensor as one row, or as
    one element per row when its elements must be permuted like rows (Q/K biases)."""
    width = 2 if entry.dtype in ("F16", "BF16") else 4
    if len(entry.shape) == 1:
        n = entry.shape[0]
        rows, length = (n, 1) if as_column else (1, n)
    else:
        length = entry.shape[-1]
        rows = entry.n_elements // max(length, 1)
    return SourceSlice(path, entry.name, entry.begin, rows, length, length * width, entry.dtype)


def _sort_key(name: str) -> tuple[int, int, str]:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), name)
    return (0 if parts[0] == "token_embd" else 2, 0, name)


@dataclass(frozen=True)
class HFTensors:
    """The GGUF tensors an HF checkpoint becomes, before types are chosen (all F32): names,
    shapes, sources and transforms, as the converter writes them."""

    tensors: tuple[TensorPlan, ...]
    hparams: ModelHparams
    spec: hf_arch.ArchSpec
    hyper: hf_arch.Hyper
    notes: tuple[str, ...]


def hf_gguf_tensors(model: ModelInfo) -> HFTensors:
    """Read the checkpoint's headers (and bitsandbytes quant states) into its tensor program;
    refuse what cannot be converted. No metadata, no tokenizer: cheap enough for estimates."""
    config = model.metadata
    spec = hf_arch.arch_spec(model_type(config))
    if model.quantization and model.quantization not in READABLE_DTYPES + BNB_QUANTIZATIONS:
        raise UnsupportedError(
            f"a quantized checkpoint ({model.quantization}): conversion reads F32, F16 and "
            "BF16 weights and bitsandbytes checkpoints", path=model.path,
            hint="dequantize it to F16/BF16 safetensors first")
    hyper = hf_arch.read_hyper(config, spec)
    tensor_map = get_tensor_name_map(spec.gguf_arch, hyper.n_layer)
    notes: list[str] = []
    headers = [read_safetensors_header(file) for file in model.files]
    bnb = find_bnb_weights(headers, int8=model.quantization == "bnb-int8")

    singles: dict[str, tuple[MappedName, Source]] = {}
    experts: dict[str, dict[int, tuple[MappedName, Source]]] = defaultdict(dict)
    for header in headers:
        file = header.path
        for entry in header.entries:
            if entry.name.endswith(IGNORED_SUFFIXES) or entry.name in bnb.companions:
                continue
            mapped = map_hf_name(entry.name, tensor_map, spec)
            if mapped is None:
                raise UnsupportedError(
                    f"maps to no tensor of llama.cpp's {spec.gguf_name} architecture, so the "
                    "GGUF would not load", path=file, tensor=entry.name,
                    hint="this checkpoint has layers the architecture does not have")
            quantized = bnb.weights.get(entry.name)
            if quantized is None and entry.dtype not in READABLE_DTYPES:
                raise UnsupportedError(
                    f"stored as {entry.dtype}; conversion reads F32, F16 and BF16 weights",
                    path=file, tensor=entry.name,
                    hint="dequantize a quantized checkpoint first")
            source = Source(entry, file) if quantized is None else Source(
                entry, file, quantized.shape, quantized.piece)
            want = expected_shape(mapped, hyper, entry.name.endswith(".bias"))
            if want is not None and source.shape != want:
                raise FormatError(
                    f"has shape {list(source.shape)} but config.json implies {list(want)}",
                    path=file, tensor=entry.name, hint="the checkpoint and its config disagree")
            item = (mapped, source)
            if mapped.expert is not None:
                if mapped.expert in experts[mapped.gguf_name]:
                    raise FormatError("expert stored twice", path=file, tensor=entry.name)
                experts[mapped.gguf_name][mapped.expert] = item
            elif mapped.gguf_name in singles:
                raise FormatError(f"two tensors map to {mapped.gguf_name}", path=file,
                                  tensor=entry.name)
            else:
                singles[mapped.gguf_name] = item

    tensors: list[TensorPlan] = []
    for gguf_name, (mapped, source) in singles.items():
        tensors.append(_single(gguf_name, mapped, source, spec, hyper))
    for gguf_name, members in experts.items():
        tensors.append(_stacked(gguf_name, members, hyper))
    factors = hf_arch.llama3_rope_factors(config, hyper)
    if factors is not None:
        tensors.append(TensorPlan(
            "rope_freqs.weight", "F32", (len(factors),), 4 * len(factors),
            (SourceSlice(None, "rope_freqs (generated)", 0, 1, len(factors), 4 * len(factors),
                         "F32", tuple(factors)),), fixed_type=True,
            note="generated from the llama3 rope scaling parameters"))
    tensors.sort(key=lambda t: _sort_key(t.name))
    hparams = ModelHparams(hyper.n_layer, hyper.n_head, hyper.n_head_kv, hyper.n_expert,
                           spec.gguf_name)
    permuted = sum(1 for t in tensors if t.permute)
    if permuted:
        notes.append(f"Q/K rows of {permuted} tensors permuted for llama.cpp's rotary embedding")
    if experts:
        notes.append(f"{sum(len(m) for m in experts.values())} per-expert tensors stacked into "
                     f"{len(experts)} blk.N.ffn_*_exps tensors")
    notes.extend(bnb_notes(bnb))
    if not any(t.name == "output.weight" for t in tensors):
        notes.append("no lm_head: output tied to token_embd (llama.cpp reuses the embeddings)")
    return HFTensors(tuple(tensors), hparams, spec, hyper, tuple(notes))


def plan_hf_to_gguf(model: ModelInfo, target: Path, out_type: str, device: Device,
                    overwrite: bool, require_tokenizer: bool, pure: bool = False,
                    type_overrides: TypeOverrides | None = None) -> ConversionPlan:
    program = hf_gguf_tensors(model)
    tensors, hparams, spec, hyper = (program.tensors, program.hparams, program.spec,
                                     program.hyper)
    config = model.metadata
    notes = list(program.notes)
    typed = assign_types(tensors, out_type, hparams, pure=pure, keep_source="F32",
                         overrides=type_overrides)

    writer = recording_writer(spec.gguf_name)
    total_params = sum(t.n_elements for t in tensors)
    meta = gguf.Metadata.load(None, model.path, None, total_params)
    if meta.name is None:
        meta.name = model.path.name
    meta.set_gguf_meta_model(writer)
    writer.add_type(gguf.GGUFType.MODEL)
    notes.extend(hf_arch.add_hyperparameters(writer, config, spec, hyper))
    writer.add_file_type(file_type_of(out_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    vocab = tokenizer.add_tokenizer(writer, model.path, hyper.vocab_size, require_tokenizer)
    notes.extend(vocab.notes)
    entries = entries_of(writer)

    return ConversionPlan(
        source=model.path, source_format="hf", target=target, to="gguf", out_type=out_type,
        architecture=spec.gguf_name, tensors=typed, device=device,
        overwrite=overwrite, metadata=entries, metadata_bytes=_metadata_bytes(writer),
        input_bytes=model.file_size, notes=tuple(notes),
        warnings=tuple(vocab.warnings),
        type_rules=TypeRules(hparams, pure, "F32", type_overrides),
        loads_transformers=vocab.loads_transformers)


def _single(name: str, mapped: MappedName, source: Source, spec: hf_arch.ArchSpec,
            hyper: hf_arch.Hyper) -> TensorPlan:
    """The tensor with its sources and transform; `assign_types` gives it its type."""
    permute = spec.permute_qk and mapped.kind in QK_KINDS
    n_head = 0
    if permute:
        n_head = hyper.n_head if mapped.kind == MODEL_TENSOR.ATTN_Q else hyper.n_head_kv
    piece = source.piece or stored_rows(source.entry, source.file,
                                        as_column=permute and len(source.shape) == 1)
    note = f"Q/K rows permuted for llama.cpp's rotary embedding ({n_head} heads)" \
        if permute else None
    if source.piece is not None:
        note = "; ".join(x for x in (f"dequantized from bitsandbytes {piece.dtype}", note) if x)
    return TensorPlan(name, "F32", source.shape, 4 * math.prod(source.shape), (piece,),
                      permute="qk" if permute else "", n_head=n_head, note=note)


def _stacked(name: str, members: dict[int, tuple[MappedName, Source]],
             hyper: hf_arch.Hyper) -> TensorPlan:
    wanted = set(range(hyper.n_expert))
    if set(members) != wanted:
        missing = sorted(wanted - set(members))
        extra = sorted(set(members) - wanted)
        some = next(iter(members.values()))[1].entry.name
        raise FormatError(
            f"expert tensors do not match num_local_experts={hyper.n_expert}"
            + (f" (missing experts {missing})" if missing else "")
            + (f" (unexpected experts {extra})" if extra else ""), tensor=some)
    ordered = [members[i][1] for i in range(hyper.n_expert)]
    first = ordered[0]
    dtypes = {source.dtype for source in ordered}
    if len(dtypes) != 1:
        raise FormatError(f"experts stored in mixed dtypes {sorted(dtypes)}",
                          tensor=first.entry.name)
    shape = (hyper.n_expert, *first.shape)
    pieces = tuple(source.piece or stored_rows(source.entry, source.file) for source in ordered)
    return TensorPlan(name, "F32", shape, 4 * math.prod(shape), pieces,
                      note=f"{hyper.n_expert} experts stacked")


def _metadata_bytes(writer: gguf.GGUFWriter) -> int:
    """Size of the metadata as the writer will encode it."""
    total = 24
    for key, value in writer.kv_data[0].items():
        total += 8 + len(key.encode()) + len(writer._pack_val(value.value, value.type, True,
                                                               value.sub_type))
    return total
