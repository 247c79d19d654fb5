"""GGUF files as merge inputs: each tensor dequantized on the job's device as it is read.

GGUF names (`blk.3.attn_q.weight`) are given the Hugging Face name the base model uses for the
same weight, found through gguf-py's own name table (every HF spelling that maps to that GGUF
name, the one the base has chosen); stacked experts (`ffn_gate_exps`) and split ones
(`ffn_gate.E`) become canonical expert units like any HF layout. llama.cpp stores the Q and K
rows of llama-architecture models interleaved per head; they are put back in HF's order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from app.core.errors import FormatError, UnsupportedError
from app.core.formats.gguf_header import GGUFHeader, read_gguf_header
from app.core.merge.canonical import layout_of
from app.core.merge.config import ModelRef
from app.core.merge.sources import ModelSource, StoredTensor

if TYPE_CHECKING:
    import torch

# Architectures whose converter permutes Q/K rows for llama.cpp's rotary embedding.
PERMUTED_QK = frozenset({"llama"})
_SPLIT_EXPERT = re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(?P<kind>gate|up|down)\.(?P<expert>\d+)"
                           r"\.weight$")
_SPLIT_NAMES = {"gate": "w1", "up": "w3", "down": "w2"}


@dataclass
class GGUFSource(ModelSource):
    header: GGUFHeader | None = None
    gguf_names: dict[str, str] | None = None  # HF name → GGUF name, for messages

    @property
    def model_type(self) -> str | None:
        # transformers reads one model type per llama.cpp architecture (a Mistral GGUF is a
        # llama): not a fact to hold against HF folders that state theirs.
        return None

    def read(self, name: str, device: torch.device, float32: bool = True) -> torch.Tensor:
        import torch

        from app.core.convert.reading import decode_rows

        tensor = self.tensors[name]
        raw = torch.empty(tensor.n_bytes, dtype=torch.uint8)
        with open(tensor.file, "rb") as handle:
            handle.seek(tensor.offset)
            if handle.readinto(raw.numpy()) != tensor.n_bytes:
                raise FormatError("tensor data is truncated", path=tensor.file, tensor=name,
                                  hint="re-download the file")
        raw = raw.to(device)
        row = tensor.shape[-1] if tensor.shape else 1
        values = decode_rows(raw, tensor.dtype, math.prod(tensor.shape) // row, row)
        values = values.reshape(tensor.shape)
        assert self.header is not None and self.gguf_names is not None
        gguf_name = self.gguf_names[name]
        if self.header.architecture in PERMUTED_QK and (".attn_q." in gguf_name or
                                                        ".attn_k." in gguf_name):
            key = "attention.head_count" if ".attn_q." in gguf_name else \
                "attention.head_count_kv"
            heads = int(self.header.arch_field(key) or self.header.arch_field(
                "attention.head_count"))
            values = unpermute_qk(values, heads)
        return values


def unpermute_qk(values: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's per-head interleave of Q/K rows (weights and biases alike)."""
    rows = values.shape[0]
    rest = values.shape[1:]
    return (values.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2)
            .reshape(values.shape))


def _candidates(header: GGUFHeader) -> dict[str, list[str]]:
    arch = header.architecture
    by_name = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise UnsupportedError(f"GGUF architecture {arch!r} is unknown to gguf-py",
                               path=header.path)
    blocks = int(header.arch_field("block_count") or 0)
    table = gguf.get_tensor_name_map(by_name[arch], blocks)
    out: dict[str, list[str]] = {}
    for candidate, (_kind, gguf_base) in table.mapping.items():
        if candidate != gguf_base:
            out.setdefault(gguf_base, []).append(candidate)
    return out


def _hf_name(gguf_name: str, shape: tuple[int, ...], candidates: dict[str, list[str]],
             wanted: set[str]) -> str:
    split = _SPLIT_EXPERT.match(gguf_name)
    if split:
        return (f"model.layers.{split['layer']}.block_sparse_moe.experts.{split['expert']}."
                f"{_SPLIT_NAMES[split['kind']]}.weight")
    base, _, suffix = gguf_name.rpartition(".")
    options = [f"{c}.{suffix}" for c in candidates.get(base, [])]
    for option in options:
        if set(layout_of(option, shape).keys()) <= wanted:
            return option
    preferred = [o for o in options if o.startswith(("model.", "lm_head"))]
    return (preferred or options or [gguf_name])[0]


def open_gguf_source(ref: ModelRef, wanted: Iterable[str], describes: bool = False
                     ) -> GGUFSource:
    """A GGUF input, its tensors named as the base model (whose canonical keys are `wanted`)
    names them. One that `describes` the output (the base model, the tokenizer source) gets
    the Hugging Face config transformers reads from its metadata, and its tensors the names of
    that model's parameters, as a GGUF → HF conversion writes them."""
    if ref.adapter is not None:
        raise UnsupportedError("a LoRA adapter applies to a Hugging Face folder, not a GGUF",
                               path=ref.path)
    header = read_gguf_header(ref.path)
    if header.get("split.count", 1) not in (1, None):
        raise UnsupportedError("split GGUF files cannot be merged yet", path=ref.path,
                               hint="merge the shards into one file first")
    cut = header.truncated_tensors()
    if cut:
        raise UnsupportedError(f"truncated: tensor {cut[0].name!r} ends past the end of the "
                               "file", path=ref.path, hint="re-download it")
    candidates = _candidates(header)
    keys = set(wanted)
    config: dict[str, Any] = {}
    preferred: dict[str, str] = {}
    experts: dict[str, str] = {}
    if describes:
        config, preferred, experts = _hf_description(ref.path, header)
    tensors: dict[str, StoredTensor] = {}
    names: dict[str, str] = {}
    for entry in header.tensors:
        if entry.name == "rope_freqs.weight":
            continue  # generated by the converter from the config; HF models recompute it
        shape = tuple(reversed(entry.shape))
        if entry.name in experts and len(shape) == 3:
            # Stacked experts become the per-expert tensors transformers loads: each expert's
            # rows are contiguous, whole quant blocks.
            per_expert = entry.n_bytes // shape[0]
            for xid in range(shape[0]):
                hf = experts[entry.name].format(xid=xid)
                tensors[hf] = StoredTensor(hf, entry.type_name, shape[1:], ref.path,
                                           entry.offset + xid * per_expert, per_expert,
                                           ggml=True)
                names[hf] = entry.name
            continue
        hf = preferred.get(entry.name) or _hf_name(entry.name, shape, candidates, keys)
        tensors[hf] = StoredTensor(hf, entry.type_name, shape, ref.path, entry.offset,
                                   entry.n_bytes, ggml=True)
        names[hf] = entry.name
    return GGUFSource(ref, tensors, config, header=header, gguf_names=names)


def _hf_description(path: Path, header: GGUFHeader
                    ) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """(config.json of the GGUF's model, GGUF name → HF parameter name, stacked-expert GGUF
    name → per-expert HF name pattern with {xid}), as a GGUF → HF conversion names them."""
    from app.core.convert.plan_gguf_hf import hf_config, hf_names

    has_experts = any(len(e.shape) == 3 and e.name.endswith("_exps.weight")
                      for e in header.tensors)
    config, spec = hf_config(path, has_experts, header)
    names, experts, _params = hf_names(config, spec)
    return config.to_dict(), names, experts


def tokenizer_problem(path: Path) -> str | None:
    """Why the GGUF's vocabulary cannot be written as tokenizer.json, or None when it can."""
    from app.core.convert.plan_gguf_hf import _tokenizer_problem

    header = read_gguf_header(path)
    return _tokenizer_problem(header, header.get("tokenizer.ggml.model"))
