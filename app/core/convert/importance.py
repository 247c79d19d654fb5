"""An importance matrix in a conversion: checked against the plan's tensors when planning,
applied per tensor (per expert slice of a stacked tensor) when quantizing, recorded in the
output's metadata, all as llama-quantize --imatrix does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from gguf import GGUFValueType

from app.core.convert.metadata import MetaEntry, replace_entry
from app.core.convert.plan import ConversionPlan, SourceSlice, TensorPlan
from app.core.errors import OptionError
from app.core.quant import get_type
from app.core.quant.imatrix_file import ImportanceMatrix, read_imatrix, resolve_weights
from app.core.quant.mixes import Category, category_of, layer_of

if TYPE_CHECKING:
    import torch

# llama-quantize's kv overrides: at most 127 characters of a string value are kept.
_MAX_STRING = 127


# The types ggml quantizes with importance weights (the paths of quant/weighted.py); for the
# others (Q8_0 and the float types) llama-quantize ignores a matrix. Plain data: a window
# decides with it whether a matrix can matter before anything is planned.
WEIGHTED_TYPES = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                            "Q6_K"})


def importance_applies(out_type: str) -> bool:
    """Whether a matrix weights the quantizer of most tensors of the target `out_type`."""
    from app.core.quant import TARGETS

    target = TARGETS.get(str(out_type).upper())
    return target is not None and target.default_type.name in WEIGHTED_TYPES


@dataclass(frozen=True, eq=False)
class ImportancePlan:
    """The matrix a plan quantizes with, and the weights of each tensor it covers."""

    matrix: ImportanceMatrix
    weights: Mapping[str, np.ndarray]  # [n_mat, n] float32 by output tensor name
    uncovered: tuple[str, ...]

    @property
    def covered(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def weights_for(self, tensor: TensorPlan) -> np.ndarray | None:
        """[n_mat, n] float32 for a covered tensor (n_mat: experts of a stacked tensor)."""
        return self.weights.get(tensor.name)


def _quantized(plan: ConversionPlan) -> list[TensorPlan]:
    return [t for t in plan.tensors if not t.copy and not t.fixed_type
            and get_type(t.out_type).is_quantized]


def _matrix_shape(tensor: TensorPlan) -> tuple[int, int]:
    """(ne0, n_mat) as llama-quantize compares them: ne[0] * ne[2]."""
    return tensor.shape[-1], tensor.shape[0] if len(tensor.shape) == 3 else 1


def attach_importance(plan: ConversionPlan, imatrix: str | Path) -> ConversionPlan:
    """`plan` quantizing with the matrix in `imatrix`; refused when it was made for another
    model. The tensors it does not cover are quantized without it, and the plan says so."""
    if plan.to != "gguf" or not plan.tensors or not any(
            get_type(t.out_type).is_quantized for t in plan.tensors):
        raise OptionError("an importance matrix only applies to a quantized GGUF output "
                          f"(not {plan.out_type if plan.to == 'gguf' else 'HF safetensors'})")
    matrix = read_imatrix(imatrix)
    plan = _imatrix_mix_rules(plan)
    quantized = _quantized(plan)
    shapes = {t.name: _matrix_shape(t) for t in plan.tensors if len(t.shape) >= 2}
    resolved = resolve_weights(matrix, shapes)
    weights = {t.name: w for t in quantized if (w := resolved.get(t.name)) is not None}
    covered = list(weights)
    uncovered = [t.name for t in quantized if t.name not in weights]
    notes = [f"importance matrix {Path(imatrix).name}: {len(matrix.entries)} entries, "
             f"weights {len(covered)} of {len(quantized)} quantized tensors"]
    notes += [f"{name}: not in the importance matrix, quantized without it"
              for name in uncovered]
    metadata = plan.metadata
    for entry in _metadata(matrix, Path(imatrix)):
        metadata = replace_entry(metadata, entry)
    return replace(plan, importance=ImportancePlan(matrix, weights, tuple(uncovered)),
                   metadata=metadata, notes=plan.notes + tuple(notes))


def _metadata(matrix: ImportanceMatrix, path: Path) -> list[MetaEntry]:
    """The keys llama-quantize writes for --imatrix (its kv overrides)."""
    entries = [MetaEntry("quantize.imatrix.file", str(path)[:_MAX_STRING], GGUFValueType.STRING)]
    if matrix.datasets:
        entries.append(MetaEntry("quantize.imatrix.dataset", matrix.datasets[0][:_MAX_STRING],
                                 GGUFValueType.STRING))
    entries.append(MetaEntry("quantize.imatrix.entries_count", len(matrix.entries),
                             GGUFValueType.UINT32))
    if matrix.chunk_count > 0:
        entries.append(MetaEntry("quantize.imatrix.chunks_count", matrix.chunk_count,
                                 GGUFValueType.UINT32))
    return entries


# With a matrix, llama-quantize gives the first eighth of the ffn_down layers of a Q4_0 (Q5_0)
# file Q4_1 (Q5_1): "a guard against craziness in the first few ffn_down layers".
_GUARD = {"Q4_0": "Q4_1", "Q5_0": "Q5_1"}


def _imatrix_mix_rules(plan: ConversionPlan) -> ConversionPlan:
    guard = _GUARD.get(plan.out_type)
    rules = plan.type_rules
    if guard is None or rules is None or rules.pure:
        return plan
    n_layer = rules.hparams.n_layer
    tensors = []
    for tensor in plan.tensors:
        layer = layer_of(tensor.name)
        if (tensor.out_type == plan.out_type and not tensor.fixed_type and layer is not None
                and category_of(tensor.name) == Category.FFN_DOWN and layer < n_layer // 8):
            row = tensor.shape[-1]
            n_bytes = tensor.n_elements // row * get_type(guard).row_bytes(row)
            tensor = replace(tensor, out_type=guard, n_bytes=n_bytes, copy=False,
                             note=f"{guard} for an early ffn_down with an importance matrix")
        tensors.append(tensor)
    return replace(plan, tensors=tuple(tensors))


def quantize_with_importance(values: torch.Tensor, tensor: TensorPlan, piece: SourceSlice,
                             first_row: int, weights: np.ndarray) -> torch.Tensor:
    """Quantize rows [first_row, first_row + n) of `piece` of `tensor`, each with the weights
    of the matrix (expert) it belongs to; never a chunk across an expert boundary."""
    import torch

    from app.core.quant import quantize

    rows_before = 0
    for other in tensor.slices:
        if other is piece:
            break
        rows_before += other.n_rows
    n_mat = weights.shape[0]
    rows_per_mat = max(1, (tensor.n_elements // tensor.shape[-1]) // n_mat)
    table = torch.from_numpy(weights).to(values.device)
    parts = []
    row = 0
    while row < values.shape[0]:
        global_row = rows_before + first_row + row
        mat = global_row // rows_per_mat
        take = min(values.shape[0] - row, rows_per_mat - global_row % rows_per_mat)
        parts.append(quantize(values[row:row + take], tensor.out_type, tensor=tensor.name,
                              importance=table[mat]))
        row += take
    return parts[0] if len(parts) == 1 else torch.cat(parts)
