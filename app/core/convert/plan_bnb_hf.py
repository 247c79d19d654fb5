"""Plan a bitsandbytes HF checkpoint → a plain HF safetensors checkpoint: every quantized
weight dequantized (whatever its module: language model, vision tower, projector), every other
tensor converted to the output dtype, the config without its `quantization_config`, and the
tokenizer and generation files copied."""

from __future__ import annotations

import math
from pathlib import Path

from app.core.convert.bnb_inputs import bnb_notes, find_bnb_weights
from app.core.convert.plan import ConversionPlan, Device, HFOutput, TensorPlan
from app.core.convert.plan_hf import READABLE_DTYPES, stored_rows
from app.core.convert.sizing import element_bytes
from app.core.errors import UnsupportedError
from app.core.formats.model_info import ModelInfo
from app.core.formats.safetensors_header import read_safetensors_header

TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Files beside the weights that a plain checkpoint keeps: tokenizer, chat template, generation
# and processor configs.
COPIED_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".tiktoken")
NOT_COPIED = ("config.json", "model.safetensors.index.json")


def clean_config(config: dict[str, object], out_type: str) -> dict[str, object]:
    """config.json without `quantization_config`, declaring the dtype written."""
    cleaned = {k: v for k, v in config.items() if k != "quantization_config"}
    cleaned["dtype"] = TORCH_NAMES[out_type]
    if "torch_dtype" in cleaned:
        cleaned["torch_dtype"] = TORCH_NAMES[out_type]
    return cleaned


def copied_files(folder: Path, weights: tuple[Path, ...]) -> tuple[Path, ...]:
    return tuple(sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.suffix in COPIED_SUFFIXES and path.name not in NOT_COPIED
        and path not in weights))


def plan_bnb_to_hf(model: ModelInfo, target: Path, out_type: str, device: Device,
                   overwrite: bool) -> ConversionPlan:
    headers = [read_safetensors_header(file) for file in model.files]
    bnb = find_bnb_weights(headers, int8=model.quantization == "bnb-int8")
    tensors: list[TensorPlan] = []
    for header in headers:
        for entry in header.entries:
            if entry.name in bnb.companions:
                continue
            quantized = bnb.weights.get(entry.name)
            if quantized is not None:
                piece, shape = quantized.piece, quantized.shape
                note: str | None = f"dequantized from bitsandbytes {piece.dtype}"
            elif entry.dtype in READABLE_DTYPES:
                piece, shape, note = stored_rows(entry, header.path), entry.shape, None
            else:
                raise UnsupportedError(f"stored as {entry.dtype}, which is neither a "
                                       "bitsandbytes weight nor a float tensor",
                                       path=header.path, tensor=entry.name)
            n_bytes = int(math.prod(shape) * element_bytes(out_type))
            tensors.append(TensorPlan(entry.name, out_type, shape, n_bytes, (piece,),
                                      copy=piece.bnb is None and piece.dtype == out_type,
                                      note=note))
    config = clean_config(dict(model.metadata), out_type)
    output = HFOutput(config, copied_files=copied_files(model.path, tuple(model.files)))
    notes = bnb_notes(bnb) + ["config.json written without quantization_config"]
    return ConversionPlan(
        source=model.path, source_format="hf", target=target, to="hf", out_type=out_type,
        architecture=str(config.get("model_type", "?")), tensors=tuple(tensors), device=device,
        overwrite=overwrite, hf_files=("config.json", *(p.name for p in output.copied_files)),
        input_bytes=model.file_size, notes=tuple(notes), metadata_bytes=64 * len(tensors),
        hf_output=output)
