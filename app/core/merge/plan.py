"""The merge plan: every output tensor with its action, inputs and resolved parameters.

Planning reads headers only. Each tensor of the base model (renumbered into the output's
layers) is `merged` (the inputs that took part), `copied` from one input (why: an integer
tensor, present in one model only, a vocabulary that differs, a passthrough slice) or
`refused` (why: missing from an input, shapes that disagree). A plan with refusals cannot run;
the job log and `merge_report.json` list the action of every tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.core.formats.file_stamp import FileStamp
from app.core.merge.canonical import Layout
from app.core.merge.config import MergeConfig, ModelRef

ActionKind = Literal["merged", "copied", "refused"]
SAFETENSORS_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2,
                     "I8": 1, "U8": 1, "BOOL": 1}
TORCH_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class InputRef:
    """One input of an output tensor: which model, at which layer, read in `layout`."""

    model: int  # index into MergePlan.models
    name: str  # the tensor in that model's own naming, for messages
    layer: int | None  # the input's layer (None for tensors outside the layers)


@dataclass(frozen=True)
class TensorAction:
    name: str
    action: ActionKind
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype written
    layout: Layout  # the output tensor's units (the template's layout)
    inputs: tuple[InputRef, ...] = ()  # method order: the base first where there is one
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def n_bytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_BYTES[self.dtype]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class MergePlan:
    config: MergeConfig
    target: Path
    models: tuple[Any, ...]  # ModelSource, by index
    base: int
    tokenizer_from: int
    actions: tuple[TensorAction, ...]
    out_dtype: str
    device: str
    hf_config: dict[str, Any]
    warnings: tuple[str, ...] = ()
    overwrite: bool = False
    shard_bytes: int = 5 * 1000**3
    gguf_type: str | None = None
    vocab: Any = None  # a UnionVocab for `tokenizer_source: union`
    # The weight files as the planner read them: the job refuses to run when one has changed.
    input_stamps: tuple[FileStamp, ...] = ()

    def in_union(self, action: TensorAction) -> bool:
        """Whether the tensor's rows are tokens of the union vocabulary (read permuted)."""
        return self.vocab is not None and bool(action.params.get("vocabulary"))

    @property
    def refused(self) -> list[TensorAction]:
        return [a for a in self.actions if a.action == "refused"]

    @property
    def written(self) -> list[TensorAction]:
        return [a for a in self.actions if a.action != "refused"]

    @property
    def output_bytes(self) -> int:
        # Headers: about 200 bytes of JSON per tensor; config, tokenizer and report beside them.
        return sum(a.n_bytes for a in self.written) + 256 * len(self.written) + (1 << 20)

    @property
    def estimated_peak_bytes(self) -> int:
        """Working memory at the largest tensor: float32 chunks of each input and of the
        output, and each input that cannot be read a chunk at a time from its file whole, as
        stored (float32 when it is dequantized or adapted)."""
        chunk = 1 << 20  # chunked.CHUNK_ELEMENTS, without importing torch to plan
        peak = 0
        for action in self.written:
            held = 0
            if self.in_union(action):
                # Each input read whole, gathered into the union's order, and its stand-ins.
                held = 3 * 4 * action.n_elements * len(action.inputs)
            for ref in () if self.in_union(action) else action.inputs:
                model = self.models[ref.model]
                stored = model.tensors.get(ref.name)
                if stored is not None and model.streams(ref.name) and \
                        model.stored_as(action.layout, ref.layer) == ref.name:
                    continue
                size = 4 if stored is None or stored.ggml or model.adapter is not None \
                    else SAFETENSORS_BYTES.get(stored.dtype, 4)
                held += action.n_elements * size
            temporaries = 4 * min(action.n_elements, chunk) * (2 * len(action.inputs) + 6)
            peak = max(peak, held + temporaries)
        return peak

    def model_label(self, index: int) -> str:
        return self.models[index].label

    def counts(self) -> dict[str, int]:
        out = {"merged": 0, "copied": 0, "refused": 0}
        for action in self.actions:
            out[action.action] += 1
        return out

    def action_json(self, action: TensorAction) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": action.name, "action": action.action, "shape": list(action.shape),
            "dtype": action.dtype,
            "models": [self.model_label(i.model) for i in action.inputs],
            "sources": [i.name for i in action.inputs]}
        if action.reason:
            entry["reason"] = action.reason
        if action.params:
            entry["parameters"] = {k: v for k, v in action.params.items() if k != "seeds"}
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target), "merge_method": self.config.merge_method,
            "base_model": self.model_label(self.base),
            "models": [m.label for m in self.models],
            "dtype": TORCH_DTYPE_NAMES.get(self.out_dtype, self.out_dtype),
            "device": self.device, "seed": self.config.seed,
            "tokenizer_from": self.model_label(self.tokenizer_from),
            "output_bytes": self.output_bytes,
            "estimated_peak_bytes": self.estimated_peak_bytes,
            "counts": self.counts(), "warnings": list(self.warnings),
            "tensors": [self.action_json(a) for a in self.actions],
        }


def model_index(models: tuple[Any, ...], ref: ModelRef) -> int:
    for index, model in enumerate(models):
        if model.ref == ref:
            return index
    raise KeyError(ref.label)
