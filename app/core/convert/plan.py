"""The conversion plan: every output tensor, its source bytes, type and size, the metadata, and
the memory and disk the job will need. Planning reads headers only and writes nothing; all that
can be refused is refused here, before a byte is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.core.convert.metadata import MetaEntry
from app.core.convert.sizing import estimate_naive_peak, estimate_peak
from app.core.formats.file_stamp import FileStamp
from app.core.quant.bnb_state import Bnb4State
from app.core.quant.specs import ModelHparams

if TYPE_CHECKING:
    from app.core.convert.importance import ImportancePlan
    from app.core.quant.overrides import TypeOverrides

OutputFormat = Literal["gguf", "hf"]
# What an output tensor's program does: generate values (rope factors), stack several inputs
# (experts), take a slice of one (an expert of a stacked tensor), copy bytes unchanged, decode
# quantized blocks or bitsandbytes codes, permute Q/K rows, and encode: convert to a float type
# or quantize to a block type.
Operation = Literal["generate", "stack", "take", "copy", "dequantize", "permute", "convert",
                    "quantize"]
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def is_float_type(dtype: str) -> bool:
    return dtype in FLOAT_TYPES


Device = str  # "cpu", "cuda" or "cuda:N"
Permute = Literal["", "qk", "unqk"]


@dataclass(frozen=True)
class StoredTensor:
    """A whole stored tensor read beside a quantized weight (its scales, its state)."""

    file: Path
    tensor: str
    offset: int  # absolute byte offset in `file`
    n_bytes: int
    dtype: str  # safetensors dtype


BnbKind = Literal["NF4", "FP4", "INT8"]


@dataclass(frozen=True)
class BnbEncoding:
    """A bitsandbytes weight's companions: 4-bit (`state`, `absmax`, with double quantization
    `nested_absmax` and `nested_quant_map`) or 8-bit (`scb`, one scale per row)."""

    kind: BnbKind
    state: Bnb4State | None = None
    absmax: StoredTensor | None = None
    nested_absmax: StoredTensor | None = None
    nested_quant_map: StoredTensor | None = None
    scb: StoredTensor | None = None

    @property
    def companions(self) -> tuple[StoredTensor, ...]:
        return tuple(t for t in (self.absmax, self.nested_absmax, self.nested_quant_map,
                                 self.scb) if t is not None)


@dataclass(frozen=True)
class SourceSlice:
    """Consecutive rows of one stored tensor (or generated values, for `rope_freqs`).

    `file` is where the bytes are. SourceReader is the one place that opens it, so a source
    that is not a local path (an HTTP range) is a new kind of location read there; a GGUF inside
    another app's store (Ollama's, LM Studio's blobs) is a local file already."""

    file: Path | None
    tensor: str  # the source tensor's name, for messages
    offset: int  # absolute byte offset of the first row in `file`
    n_rows: int
    row_length: int  # elements per row
    row_bytes: int
    dtype: str  # safetensors dtype (BF16, F16, F32), GGML type name (Q4_1, F16, ...) or the
    # bitsandbytes kind (NF4, FP4, INT8) whose companions `bnb` holds
    values: tuple[float, ...] | None = None
    bnb: BnbEncoding | None = None
    take_of: str | None = None  # the rows are one part (an expert) of this larger tensor

    @property
    def n_bytes(self) -> int:
        return self.n_rows * self.row_bytes

    @property
    def n_elements(self) -> int:
        return self.n_rows * self.row_length


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: made of `slices` in order, each decoded, transformed and encoded."""

    name: str
    out_type: str  # GGML type name for GGUF output, F16/BF16/F32 for safetensors
    shape: tuple[int, ...]  # row-major (PyTorch order): the last dimension is the row
    n_bytes: int
    slices: tuple[SourceSlice, ...]
    permute: Permute = ""  # "qk": llama.cpp's Q/K row interleave; "unqk": its inverse
    n_head: int = 0  # heads of the (un)permutation
    copy: bool = False  # bytes copied unchanged (same type, nothing to transform)
    note: str | None = None  # a decision worth logging (fallback, stacking, ...)
    fallback: str | None = None  # why `out_type` is not the requested type
    fixed_type: bool = False  # the type does not follow the requested one (norms, --keep-type)

    @property
    def sources(self) -> tuple[str, ...]:
        names: list[str] = []
        for piece in self.slices:
            if piece.tensor not in names:
                names.append(piece.tensor)
        return tuple(names)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def operations(self) -> tuple[Operation, ...]:
        """What is done to the inputs, in order."""
        ops: list[Operation] = []
        if any(piece.values is not None for piece in self.slices):
            ops.append("generate")
        if len(self.slices) > 1:
            ops.append("stack")
        elif self.slices and self.slices[0].take_of is not None:
            ops.append("take")
        if self.copy:
            return (*ops, "copy")
        if any(piece.bnb is not None or not is_float_type(piece.dtype) for piece in self.slices):
            ops.append("dequantize")
        if self.permute:
            ops.append("permute")
        ops.append("convert" if is_float_type(self.out_type) else "quantize")
        return tuple(ops)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.out_type, "shape": list(self.shape),
                "n_bytes": self.n_bytes, "sources": list(self.sources),
                "source_types": sorted({piece.dtype for piece in self.slices}),
                "operations": list(self.operations), "copy": self.copy,
                "permute": self.permute or None, "fallback": self.fallback, "note": self.note}


@dataclass(frozen=True)
class TypeRules:
    """How each tensor's GGUF type was chosen (`assign_types`), kept so that `plan_for_type`
    can give the same conversion another target without reading the source again."""

    hparams: ModelHparams
    pure: bool = False  # every weight the target's one type
    keep_source: str = "F32"  # what fixed-type tensors keep: "F32", or "source" (their own type)
    overrides: TypeOverrides | None = None  # per-tensor types the user chose


@dataclass(frozen=True)
class HFOutput:
    """What an HF safetensors output gets beside its weights."""

    config: dict[str, Any] = field(compare=False, hash=False)  # config.json
    # True: config.json and generation_config.json are written by transformers' config class
    # (GGUF sources); False: `config` is written as it is and the source's files are copied.
    through_transformers: bool = False
    tokenizer_from_gguf: Path | None = None  # a GGUF whose vocabulary becomes tokenizer.json
    copied_files: tuple[Path, ...] = ()  # written unchanged (tokenizer, generation config)


@dataclass(frozen=True)
class ConversionPlan:
    source: Path
    source_format: Literal["hf", "gguf"]
    target: Path
    to: OutputFormat
    out_type: str
    architecture: str
    tensors: tuple[TensorPlan, ...]
    device: Device = "cpu"
    overwrite: bool = False
    metadata: tuple[MetaEntry, ...] = ()  # GGUF output: keys written (overriding copied ones)
    copy_metadata_from: Path | None = None  # GGUF → GGUF: every other key comes from here
    metadata_bytes: int = 0  # header size of the output, estimated
    hf_files: tuple[str, ...] = ()  # HF output: files written beside the weights
    input_bytes: int = 0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    # An importance matrix weighting the quantizers (attach_importance), or None.
    importance: ImportancePlan | None = field(default=None, compare=False, hash=False)
    type_rules: TypeRules | None = None  # GGUF output
    hf_output: HFOutput | None = None  # HF output
    loads_transformers: bool = False  # the job imports transformers (tokenizer, config)
    inputs: tuple[Path, ...] = ()  # every file the program reads
    # The inputs as the planner read them: the job refuses to run when one has changed since.
    input_stamps: tuple[FileStamp, ...] = ()

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def output_bytes(self) -> int:
        """Bytes of the output on disk (tensor data, alignment and header)."""
        return self.tensor_bytes + self.metadata_bytes + 32 * len(self.tensors)

    @property
    def estimated_peak_ram_bytes(self) -> int:
        return estimate_peak(self).ram

    @property
    def estimated_peak_vram_bytes(self) -> int:
        return estimate_peak(self).vram

    @property
    def estimated_peak_bytes(self) -> int:
        """Peak memory of this streaming job: VRAM when it runs on CUDA, RAM otherwise."""
        peak = estimate_peak(self)
        return peak.vram if self.device.startswith("cuda") else peak.ram

    @property
    def naive_peak_bytes(self) -> int:
        """Peak RAM of loading everything first (what the streaming job saves), for contrast."""
        return estimate_naive_peak(self)

    @property
    def fallbacks(self) -> tuple[str, ...]:
        return tuple(f"{t.name}: {t.fallback}" for t in self.tensors if t.fallback)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "source_format": self.source_format,
            "target": str(self.target), "to": self.to, "type": self.out_type,
            "architecture": self.architecture, "device": self.device,
            "output_bytes": self.output_bytes,
            "estimated_peak_bytes": self.estimated_peak_bytes,
            "estimated_peak_ram_bytes": self.estimated_peak_ram_bytes,
            "estimated_peak_vram_bytes": self.estimated_peak_vram_bytes,
            "naive_peak_bytes": self.naive_peak_bytes,
            "n_tensors": len(self.tensors),
            "fallbacks": list(self.fallbacks),
            "notes": list(self.notes), "warnings": list(self.warnings),
            "metadata": {e.key: e.summary() for e in self.metadata},
            "hf_files": list(self.hf_files),
            "importance_matrix": None if self.importance is None else {
                "path": str(self.importance.matrix.path),
                "covered": list(self.importance.covered),
                "uncovered": list(self.importance.uncovered)},
            "inputs": [str(p) for p in self.inputs],
            "tensors": [t.to_json() for t in self.tensors],
        }
