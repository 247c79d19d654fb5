"""Which GGML type each output tensor gets: what llama-quantize would give it for the target
(app.core.quant's planner: norms and routers keep F32, the output tensor of a Q4_0 file gets
Q6_K, rows that do not fit a block fall back), or every weight the same type with `pure`.

One planner for the converter and the fit estimates, so the sizes Modelyard predicts are the
sizes it writes; per-tensor overrides (--tensor-type and friends) go through the same planner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

from gguf import LlamaFileType

from app.core.convert.plan import TensorPlan
from app.core.errors import OptionError, OptionFact, UnsupportedError
from app.core.quant import (
    TARGETS,
    ModelHparams,
    TensorSpec,
    can_quantize,
    get_target,
    get_type,
    plan_tensor_types,
)
from app.core.quant.overrides import TypeOverrides

HF_OUTPUT_DTYPES: tuple[str, ...] = ("F16", "BF16", "F32")
# Every target a GGUF can be written as, best first; `writable_output_types` says which of them
# Modelyard can write today.
GGUF_OUTPUT_TYPES: tuple[str, ...] = tuple(TARGETS)


def writable_output_types() -> tuple[str, ...]:
    return tuple(name for name, target in TARGETS.items() if target.writable)


def parse_output_type(name: str, to: str = "gguf") -> str:
    """Normalise a `--type` value; refuse unknown names (whether the chosen types can be
    written depends on the model's shapes, so that is checked when its plan is made)."""
    upper = str(name).strip().upper()
    if to == "hf":
        if upper not in HF_OUTPUT_DTYPES:
            raise OptionError(f"a safetensors output is written as "
                              f"{', '.join(HF_OUTPUT_DTYPES)}, not {name!r}",
                              option=OptionFact("out_type"))
        return upper
    return get_target(upper).name  # raises OptionError listing the valid names


def file_type_of(target: str) -> LlamaFileType:
    """The `general.file_type` a file written for `target` declares."""
    return get_target(target).file_type


def _spec(tensor: TensorPlan, kept_type: str) -> TensorSpec:
    # The planner thinks in GGUF order (row length first); plans are row-major.
    return TensorSpec(tensor.name, tuple(reversed(tensor.shape)), kept_type)


def assign_types(tensors: Sequence[TensorPlan], target: str, hparams: ModelHparams, *,
                 pure: bool, keep_source: Literal["F32", "source"],
                 overrides: TypeOverrides | None = None) -> tuple[TensorPlan, ...]:
    """Give every tensor that is not `fixed_type` the type the planner chooses for `target`.

    Tensors the planner does not quantize keep F32 (`keep_source="F32"`: what the HF converter
    writes for norms, biases and routers) or their source type (`"source"`: requantization).
    """
    kept = {t.name: "F32" if keep_source == "F32" else t.slices[0].dtype for t in tensors}
    plan = plan_tensor_types(target, [_spec(t, kept[t.name]) for t in tensors], hparams,
                             pure=pure, overrides=overrides)
    unwritable: list[str] = []
    typed = []
    for tensor, planned in zip(tensors, plan.tensors, strict=True):
        if tensor.fixed_type:
            typed.append(tensor)
            continue
        name = planned.type.name
        if planned.quantized and not can_quantize(name):
            unwritable.append(f"{tensor.name} ({name})")
        row = tensor.shape[-1]
        n_bytes = tensor.n_elements // max(row, 1) * get_type(name).row_bytes(row)
        typed.append(replace(
            tensor, out_type=name, n_bytes=n_bytes, fallback=planned.note,
            fixed_type=not planned.quantized,
            copy=not tensor.permute and all(s.dtype == name for s in tensor.slices)))
    if unwritable:
        raise UnsupportedError(
            f"{target} gives {len(unwritable)} tensor(s) a type Modelyard cannot write yet, "
            f"e.g. {unwritable[0]}",
            hint=f"choose one of {', '.join(writable_output_types())}")
    return tuple(typed)
