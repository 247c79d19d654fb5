"""Plan GGUF → GGUF requantization: every tensor keeps its name and shape; weights get the
requested type (or their bytes unchanged with --keep-type); metadata is copied key by key."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

from gguf import GGML_QUANT_VERSION, GGUFValueType

from app.core.convert.metadata import MetaEntry
from app.core.convert.plan import ConversionPlan, Device, SourceSlice, TensorPlan, TypeRules
from app.core.convert.tensor_types import assign_types, file_type_of
from app.core.errors import OptionError, OptionFact, UnsupportedError
from app.core.formats.gguf_header import GGUFHeader, GGUFTensorEntry, read_gguf_header
from app.core.formats.model_info import ModelInfo
from app.core.quant import can_dequantize, gguf_hparams
from app.core.quant.overrides import TypeOverrides


def read_headers(model: ModelInfo) -> list[GGUFHeader]:
    return [read_gguf_header(path) for path in model.files]


def main_header(headers: list[GGUFHeader]) -> GGUFHeader:
    return next((h for h in headers if h.get("split.no", 0) == 0), headers[0])


def gguf_slice(entry: GGUFTensorEntry, path: Path) -> SourceSlice:
    length = entry.shape[0]
    rows = entry.n_elements // max(length, 1)
    row_bytes = entry.n_bytes // max(rows, 1)
    return SourceSlice(path, entry.name, entry.offset, rows, length, row_bytes, entry.type_name)


def torch_shape(entry: GGUFTensorEntry) -> tuple[int, ...]:
    """GGUF lists ne[0] (the row) first; PyTorch lists it last."""
    return tuple(reversed(entry.shape))


def keep_matcher(pattern: str | None) -> re.Pattern[str] | None:
    """`--keep-type`: a glob (`*attn_v*`), or a regular expression when written `re:...`."""
    if not pattern:
        return None
    text = pattern[3:] if pattern.startswith("re:") else fnmatch.translate(pattern)
    try:
        return re.compile(text)
    except re.error as exc:
        raise OptionError(f"the keep-type pattern {pattern!r} is not a valid regular expression "
                          f"({exc})", option=OptionFact("keep_type")) from None


def plan_gguf_to_gguf(model: ModelInfo, target: Path, out_type: str, device: Device,
                      overwrite: bool, keep_type: str | None, pure: bool = False,
                      type_overrides: TypeOverrides | None = None) -> ConversionPlan:
    headers = read_headers(model)
    main = main_header(headers)
    keep = keep_matcher(keep_type)
    tensors: list[TensorPlan] = []
    kept = 0
    for header in headers:
        for entry in header.tensors:
            piece = gguf_slice(entry, header.path)
            matched = keep is not None and bool(keep.fullmatch(entry.name))
            kept += matched
            tensors.append(TensorPlan(entry.name, entry.type_name, torch_shape(entry),
                                      entry.n_bytes, (piece,), copy=True, fixed_type=matched,
                                      note="--keep-type: bytes copied" if matched else None))
    hparams = gguf_hparams(main)
    typed = assign_types(tensors, out_type, hparams, pure=pure, keep_source="source",
                         overrides=type_overrides)
    for tensor in typed:
        if not tensor.copy and not can_dequantize(tensor.slices[0].dtype):
            raise UnsupportedError(f"cannot read {tensor.slices[0].dtype} tensors",
                                   path=tensor.slices[0].file, tensor=tensor.name,
                                   hint="copy them unchanged with a keep-type pattern",
                                   option=OptionFact("keep_type"))
    if keep is not None and kept == 0:
        raise OptionError(f"the keep-type pattern {keep_type!r} matches no tensor of the model",
                          option=OptionFact("keep_type"),
                          path=model.path)
    notes = [f"--keep-type {keep_type!r}: {kept} tensor(s) copied unchanged"] if keep else []
    if len(headers) > 1:
        notes.append(f"{len(headers)} split shards joined into one file")
    overrides = (
        MetaEntry("general.file_type", int(file_type_of(out_type)), GGUFValueType.UINT32),
        MetaEntry("general.quantization_version", GGML_QUANT_VERSION, GGUFValueType.UINT32),
    )
    return ConversionPlan(
        source=model.path, source_format="gguf", target=target, to="gguf", out_type=out_type,
        architecture=main.architecture or "?", tensors=typed, device=device,
        overwrite=overwrite, metadata=overrides, copy_metadata_from=main.path,
        metadata_bytes=main.data_offset,
        input_bytes=model.file_size, notes=tuple(notes),
        type_rules=TypeRules(hparams, pure, "source", type_overrides))
