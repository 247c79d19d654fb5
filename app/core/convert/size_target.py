"""`--target-size`: give each weight the type that minimises the model's total quantization
error under a file size. The error of every candidate type is measured on rows of the tensor
itself (quantized, dequantized, compared; weighted per column by the importance matrix when
the plan has one), never guessed from its name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from app.core.convert.plan import ConversionPlan, TensorPlan
from app.core.errors import OptionError, UnsupportedError
from app.core.formats.model_info import format_bytes
from app.core.jobs import Reporter, check_cancel
from app.core.quant import TARGETS, can_quantize, get_type
from app.core.quant.size_target import Candidate, choose_types

CANDIDATE_TYPES = ("Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K",
                   "Q8_0", "F16")
# Rows measured per tensor, spread over its slices: enough for a stable error estimate and
# a small fraction of a large tensor.
SAMPLE_ROWS = 32
# Room kept for the keys the plan's header estimate leaves out (the importance matrix's).
HEADER_SLACK = 1024


def apply_size_target(plan: ConversionPlan, budget: int, reporter: Reporter, *,
                      counted: Callable[[TensorPlan], bool] | None = None) -> ConversionPlan:
    """`plan` with a type per weight chosen to fit `budget` bytes: the whole file, or with
    `counted`, the tensors it selects (those a GPU holds, for --fit-gpu); the others keep
    their type."""
    from app.core.quant.weighted import WEIGHTED_QUANTIZERS

    if plan.to != "gguf":
        raise OptionError("a size target applies to a GGUF output")
    if counted is None:
        counted = _every_tensor
        overhead = plan.output_bytes - plan.tensor_bytes + HEADER_SLACK
        what = f"a size target of {format_bytes(budget)}"
    else:
        overhead = 0
        what = f"{format_bytes(budget)} for the weights on the GPU"
    movable = [t for t in plan.tensors if not t.fixed_type and counted(t)]
    moving = {t.name for t in movable}
    fixed_bytes = overhead + sum(t.n_bytes for t in plan.tensors
                                 if counted(t) and t.name not in moving)
    covered = set(plan.importance.covered) if plan.importance is not None else set()
    candidates: dict[str, list[Candidate]] = {}
    for index, tensor in enumerate(movable):
        check_cancel(reporter)
        reporter.progress(index, len(movable), f"measuring {tensor.name}")
        types = [t for t in CANDIDATE_TYPES if get_type(t).fits_row(tensor.shape[-1])
                 and (can_quantize(t) or (t in WEIGHTED_QUANTIZERS and tensor.name in covered))]
        candidates[tensor.name] = _measure(plan, tensor, types)
    smallest = fixed_bytes + sum(min(c.n_bytes for c in options)
                                 for options in candidates.values())
    if smallest > budget:
        raise OptionError(f"{what} is below the smallest Modelyard can write of this model, "
                          f"{format_bytes(smallest)}", path=plan.source,
                          hint="choose a larger size or a shorter context")
    standard = _standard_mixes(plan, movable)
    chosen, winner = choose_types(candidates, budget - fixed_bytes, standard)
    tensors = []
    for tensor in plan.tensors:
        pick = chosen.get(tensor.name)
        if pick is not None and not tensor.fixed_type:
            tensor = replace(tensor, out_type=pick.type_name, n_bytes=pick.n_bytes,
                             fallback=None,
                             copy=not tensor.permute and all(s.dtype == pick.type_name
                                                             for s in tensor.slices))
        tensors.append(tensor)
    fitted = replace(plan, tensors=tuple(tensors))
    counts: dict[str, int] = {}
    for tensor in movable:
        counts[chosen[tensor.name].type_name] = counts.get(chosen[tensor.name].type_name, 0) + 1
    summary = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    how = f"the standard {winner} mix" if winner else "a custom mix"
    note = (f"size target {format_bytes(budget)}: {how} of {format_bytes(fitted.output_bytes)}"
            f" ({summary}); measured error {sum(c.error for c in chosen.values()):.4g}")
    return replace(fitted, notes=fitted.notes + (note,))


def _every_tensor(tensor: TensorPlan) -> bool:
    return True


def gpu_weight_budget(plan: ConversionPlan, vram_bytes: int,
                      context: int) -> tuple[int, Callable[[TensorPlan], bool]]:
    """For --fit-gpu: the bytes of weights a GPU with `vram_bytes` free holds with the whole
    model offloaded at `context` tokens (after the KV cache, compute buffers and runtime, as
    the fit estimate counts them), and which tensors it holds (every block and the output;
    llama.cpp keeps the input embeddings in RAM unless the output reuses them)."""
    from app.core.estimate.llama_cpp import (
        BLOCK_TENSOR,
        GPU_OVERHEAD,
        compute_buffers,
        kv_cache_bytes,
    )
    from app.core.estimate.shape import model_shape
    from app.core.estimate.verdict import usable
    from app.core.formats.scan import inspect_path

    if context <= 0:
        raise OptionError(f"context length must be positive, not {context}")
    shape = model_shape(inspect_path(plan.source))
    kv = sum(kv_cache_bytes(shape, context, layer) for layer in range(shape.n_layer)) \
        if shape.n_head else 0
    buffers = compute_buffers(shape, context, flash_attention=False)
    budget = usable(vram_bytes) - kv - buffers.reserved - GPU_OVERHEAD
    tied = shape.tied_embeddings

    def on_gpu(tensor: TensorPlan) -> bool:
        return (bool(BLOCK_TENSOR.match(tensor.name)) or tensor.name.startswith("output")
                or (tied and tensor.name == "token_embd.weight"))

    return budget, on_gpu


def _measure(plan: ConversionPlan, tensor: TensorPlan, types: list[str]) -> list[Candidate]:
    import torch

    from app.core.convert.importance import quantize_with_importance
    from app.core.convert.reading import SourceReader, read_rows
    from app.core.quant import dequantize, quantize

    n_rows = tensor.n_elements // tensor.shape[-1]
    weights = plan.importance.weights_for(tensor) if plan.importance is not None else None
    rows_per_mat = n_rows // (weights.shape[0] if weights is not None else 1)
    per_slice = max(1, SAMPLE_ROWS // len(tensor.slices))
    samples, row_weights = [], []
    rows_before = 0
    with SourceReader() as reader:
        for piece in tensor.slices:
            take = min(piece.n_rows, per_slice)
            start = (piece.n_rows - take) // 2
            values = read_rows(reader, piece, start, take)
            samples.append((piece, start, values))
            if weights is not None:
                mats = (rows_before + start + torch.arange(take)) // rows_per_mat
                row_weights.append(torch.from_numpy(weights)[mats])
            rows_before += piece.n_rows
    sampled = sum(v.shape[0] for _, _, v in samples)
    scale = n_rows / sampled
    result = []
    for type_name in types:
        error = 0.0
        for index, (piece, start, values) in enumerate(samples):
            if weights is not None and type_name in _weighted():
                raw = quantize_with_importance(values, replace(tensor, out_type=type_name),
                                               piece, start, weights)
            else:
                raw = quantize(values, type_name, tensor=tensor.name)
            diff = values - dequantize(raw, type_name, values.shape)
            squared = diff * diff
            if weights is not None:
                squared = squared * row_weights[index]
            error += float(squared.double().sum())
        row_bytes = get_type(type_name).row_bytes(tensor.shape[-1])
        result.append(Candidate(type_name, n_rows * row_bytes, error * scale))
    return result


def _weighted() -> frozenset[str]:
    from app.core.quant.weighted import WEIGHTED_QUANTIZERS

    return frozenset(WEIGHTED_QUANTIZERS)


def _standard_mixes(plan: ConversionPlan,
                    movable: list[TensorPlan]) -> dict[str, dict[str, str]]:
    """The types each writable standard quantized mix gives the movable tensors."""
    from app.core.convert.planner import plan_for_type

    mixes = {}
    for name, target in TARGETS.items():
        if not target.default_type.is_quantized:
            continue
        try:
            typed = plan_for_type(plan, name)
        except UnsupportedError:
            continue
        mixes[name] = {t.name: t.out_type for t in typed.tensors if not t.fixed_type}
    return mixes
