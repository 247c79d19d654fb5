"""Describe Hugging Face model folders: safetensors (plain, bitsandbytes, GPTQ, AWQ) and pickle."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from app.core.errors import FormatError
from app.core.formats.hf_config import (
    CONTEXT_KEYS,
    EXPERT_KEYS,
    EXPERTS_USED_KEYS,
    LAYER_KEYS,
    config_int,
    load_json_object,
    model_type,
)
from app.core.formats.model_info import (
    ExpertLayout,
    ModelInfo,
    MoEInfo,
    Problem,
    TensorInfo,
    broken_model,
)
from app.core.formats.safetensors_header import (
    SafetensorsEntry,
    SafetensorsHeader,
    read_entry_bytes,
    read_safetensors_header,
)

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
BNB4_STATE = re.compile(r"^(?P<weight>.+)\.quant_state\.bitsandbytes__(?P<kind>nf4|fp4)$")
# Tensors that only carry quantization state; they hold no parameters of their own.
AUX_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB",
                ".weight_format", ".qzeros", ".scales", ".g_idx")
SPLIT_EXPERT_NAME = re.compile(r"\.experts\.\d+\.")
STACKED_EXPERT_NAME = re.compile(r"\.experts\.(gate_up_proj|gate_proj|up_proj|down_proj|w1|w2|w3)"
                                 r"(\.weight)?$")


def is_pickle_weight(path: Path) -> bool:
    return path.suffix in PICKLE_SUFFIXES and not path.name.startswith("training_args")


def looks_like_hf_folder(names: Iterable[str]) -> bool:
    """A folder is a model when it has weights (or an index naming them)."""
    names = set(names)
    has_weights = any(n.endswith(".safetensors") for n in names) or SAFETENSORS_INDEX in names
    has_pickle = "config.json" in names and any(
        n.endswith(PICKLE_SUFFIXES) or n == "pytorch_model.bin.index.json" for n in names)
    return has_weights or has_pickle


def _weight_files(folder: Path, problems: list[Problem]) -> list[Path]:
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            index = load_json_object(index_path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise FormatError("has no weight_map object", path=index_path)
        except FormatError as exc:
            problems.append(Problem(f"{SAFETENSORS_INDEX}: {exc.reason}", fatal=True))
            return sorted(folder.glob("*.safetensors"))
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            problems.append(Problem(
                f"missing shard(s) named by {SAFETENSORS_INDEX}: {', '.join(missing)}; "
                "download them before loading or converting", fatal=True))
        return [folder / s for s in shards if s not in missing]
    return sorted(folder.glob("*.safetensors"))


def _read_headers(files: Sequence[Path], problems: list[Problem]) -> list[SafetensorsHeader]:
    headers = []
    for file in files:
        try:
            header = read_safetensors_header(file)
        except FormatError as exc:
            problems.append(Problem(f"{file.name}: {exc.reason}", fatal=True))
            continue
        cut = header.truncated_entries()
        if cut:
            problems.append(Problem(
                f"{file.name} is truncated: tensor {cut[0].name!r} ends at byte {cut[0].end} "
                f"but the file has {header.file_size} bytes; re-download it", fatal=True))
        headers.append(header)
    return headers


def _bnb4_logical_shape(header: SafetensorsHeader, state: SafetensorsEntry) -> tuple[int, ...]:
    """bitsandbytes stores the unpacked shape as JSON inside a small uint8 tensor."""
    raw = read_entry_bytes(header, state, limit=64 * 1024)
    try:
        shape = json.loads(raw.decode("utf-8"))["shape"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"unreadable bitsandbytes quant state ({exc})", path=header.path,
                          tensor=state.name) from None
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise FormatError(f"bitsandbytes quant state has shape {shape!r}", path=header.path,
                          tensor=state.name)
    return tuple(shape)


def _packed_params(entry: SafetensorsEntry, bits: int) -> int:
    # GPTQ packs 32/bits values per int32 along the input dimension, AWQ along the output one;
    # either way each stored int32 holds 32/bits parameters.
    return entry.n_elements * (32 // bits)


def _tensor_infos(headers: Sequence[SafetensorsHeader], quant: dict[str, Any],
                  problems: list[Problem]) -> list[TensorInfo]:
    method = str(quant.get("quant_method") or "")
    raw_bits = quant.get("bits")
    bits = raw_bits if isinstance(raw_bits, int) and raw_bits in (2, 3, 4, 8) else 4
    infos: list[TensorInfo] = []
    for header in headers:
        by_name = header.by_name()
        bnb4_kind: dict[str, tuple[str, SafetensorsEntry]] = {}
        for name, entry in by_name.items():
            match = BNB4_STATE.match(name)
            if match:
                bnb4_kind[match["weight"]] = (match["kind"].upper(), entry)
        for entry in header.entries:
            name = entry.name
            if name in bnb4_kind:
                kind, state = bnb4_kind[name]
                try:
                    shape = _bnb4_logical_shape(header, state)
                except FormatError as exc:
                    problems.append(Problem(exc.message, fatal=True))
                    shape = (entry.n_elements * 2,)
                count = math.prod(shape)
                infos.append(TensorInfo(name, kind, shape, entry.n_bytes, count, header.path))
            elif ".quant_state." in name or name.endswith(AUX_SUFFIXES):
                infos.append(TensorInfo(name, entry.dtype, entry.shape, entry.n_bytes, 0,
                                        header.path))
            elif entry.dtype == "I8" and f"{name.removesuffix('.weight')}.SCB" in by_name:
                infos.append(TensorInfo(name, "INT8", entry.shape, entry.n_bytes,
                                        entry.n_elements, header.path))
            elif name.endswith(".qweight") and method in ("gptq", "awq"):
                infos.append(TensorInfo(name, f"{method.upper()}-{bits}bit", entry.shape,
                                        entry.n_bytes, _packed_params(entry, bits),
                                        header.path))
            else:
                infos.append(TensorInfo(name, entry.dtype, entry.shape, entry.n_bytes,
                                        entry.n_elements, header.path))
    return infos


def quantization_label(config: dict[str, Any], tensors: Sequence[TensorInfo]) -> str | None:
    types = Counter(t.type for t in tensors)
    raw = config.get("quantization_config")
    quant: dict[str, Any] = raw if isinstance(raw, dict) else {}
    method = quant.get("quant_method")
    if types["NF4"] or types["FP4"]:
        return "bnb-nf4" if types["NF4"] >= types["FP4"] else "bnb-fp4"
    if types["INT8"]:
        return "bnb-int8"
    if method in ("gptq", "awq"):
        return f"{method}-{quant.get('bits', 4)}bit"
    if isinstance(method, str) and method:
        return method
    by_bytes: Counter[str] = Counter()
    for tensor in tensors:
        if len(tensor.shape) >= 2:
            by_bytes[tensor.type] += tensor.n_bytes
    return by_bytes.most_common(1)[0][0] if by_bytes else None


def _moe(config: dict[str, Any], names: Sequence[str]) -> MoEInfo | None:
    n_experts = config_int(config, *EXPERT_KEYS)
    if not n_experts or n_experts <= 1:
        return None
    split = any(SPLIT_EXPERT_NAME.search(n) for n in names)
    stacked = any(STACKED_EXPERT_NAME.search(n) for n in names)
    layout: ExpertLayout | None = (
        "mixed" if split and stacked else "split" if split else "stacked" if stacked else None)
    return MoEInfo(n_experts, config_int(config, *EXPERTS_USED_KEYS), layout)


def has_tokenizer_files(folder: Path) -> bool:
    return (any((folder / name).is_file() for name in TOKENIZER_FILES) or
            ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()))


def _folder_size(files: Iterable[Path]) -> int:
    total = 0
    for file in files:
        try:
            total += file.stat().st_size
        except OSError:
            pass
    return total


def _load_config(folder: Path, problems: list[Problem]) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.exists():
        adapter = folder / "adapter_config.json"
        if adapter.is_file():
            problems.append(Problem("a LoRA adapter, not a whole model: merge it into its base "
                                    "model before converting"))
        else:
            problems.append(Problem("no config.json: the architecture is unknown, so it can be "
                                    "inspected but not loaded or converted"))
        return {}
    try:
        return load_json_object(config_path)
    except FormatError as exc:
        problems.append(Problem(f"config.json {exc.reason}", fatal=True))
        return {}


def describe_hf_folder(folder: Path, name: str | None = None) -> ModelInfo:
    """Describe a Hugging Face model folder from config.json and safetensors headers.

    Never raises for a bad folder: what cannot be read becomes a problem on the model.
    """
    problems: list[Problem] = []
    config = _load_config(folder, problems)
    arch = model_type(config)
    files = _weight_files(folder, problems)
    if not files:
        pickles = sorted(p for p in folder.iterdir() if is_pickle_weight(p))
        if pickles:
            problems.append(Problem(
                f"weights are pickle files ({pickles[0].name}): not opened, because unpickling "
                "can run arbitrary code; use a safetensors version of this model, or convert "
                "it yourself only if you trust its source"))
            return ModelInfo(name=name or folder.name, path=folder, format="pickle",
                             files=tuple(pickles), architecture=arch,
                             file_size=_folder_size(pickles),
                             context_length=config_int(config, *CONTEXT_KEYS),
                             n_layers=config_int(config, *LAYER_KEYS),
                             has_tokenizer=has_tokenizer_files(folder),
                             problems=tuple(problems), metadata=config)
        if not any(p.fatal for p in problems):
            problems.append(Problem("no weight files found", fatal=True))
        return broken_model(folder, "hf", problems, name=name)

    headers = _read_headers(files, problems)
    quant = config.get("quantization_config")
    tensors = _tensor_infos(headers, quant if isinstance(quant, dict) else {}, problems)
    if config and arch is None:
        problems.append(Problem("config.json names no model_type or architectures: "
                                "transformers cannot pick a model class", fatal=False))
    has_tokenizer = has_tokenizer_files(folder)
    if not has_tokenizer and config:
        problems.append(Problem("no tokenizer files (tokenizer.json, tokenizer.model): "
                                "generation and GGUF conversion need one"))
    return ModelInfo(
        name=name or folder.name,
        path=folder,
        format="hf",
        files=tuple(files),
        architecture=arch,
        parameters=sum(t.n_params for t in tensors),
        file_size=_folder_size(files),
        tensors=tuple(tensors),
        quantization=quantization_label(config, tensors),
        context_length=config_int(config, *CONTEXT_KEYS),
        n_layers=config_int(config, *LAYER_KEYS),
        moe=_moe(config, [t.name for t in tensors]),
        has_tokenizer=has_tokenizer,
        problems=tuple(problems),
        metadata=config,
    )
