"""A conversion plan in a few readable lines: what `--dry-run` prints and a log shows first.
The whole program, tensor by tensor, is `ConversionPlan.to_json()`."""

from __future__ import annotations

from collections import Counter

from app.core.convert.plan import ConversionPlan
from app.core.formats.model_info import format_bytes

# How each operation reads in a sentence, in the order they are listed.
OPERATION_WORDS = {"generate": "generated", "stack": "stacked from experts",
                   "take": "taken out of a stacked tensor", "copy": "copied unchanged",
                   "dequantize": "dequantized", "permute": "Q/K rows permuted",
                   "convert": "converted", "quantize": "quantized"}
SHOWN_FALLBACKS = 3


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common())


def summary_lines(plan: ConversionPlan) -> list[str]:
    """Tensors by type, what is done to them, output size, peak memory, fallbacks, notes."""
    what = "HF safetensors" if plan.to == "hf" else f"GGUF {plan.out_type}"
    lines = [f"{plan.source.name} → {what}: {plan.target}"]
    types = Counter(t.out_type for t in plan.tensors)
    lines.append(f"{len(plan.tensors)} tensors: {_counts(types)}")
    sources = Counter(piece.dtype for t in plan.tensors for piece in t.slices)
    lines.append(f"read from: {_counts(sources)}")
    operations: Counter[str] = Counter(op for t in plan.tensors for op in t.operations)
    lines.append("operations: " + ", ".join(
        f"{operations[op]} {words}" for op, words in OPERATION_WORDS.items() if operations[op]))
    lines.append(f"output {format_bytes(plan.output_bytes)}; peak memory about "
                 f"{format_bytes(plan.estimated_peak_bytes)} on {plan.device} (loading "
                 f"everything first would take {format_bytes(plan.naive_peak_bytes)})")
    # each fallback text names its tensor already
    fallbacks = [t.fallback for t in plan.tensors if t.fallback]
    if fallbacks:
        shown = "; ".join(fallbacks[:SHOWN_FALLBACKS])
        more = len(fallbacks) - SHOWN_FALLBACKS
        lines.append(f"fallbacks: {len(fallbacks)} ({shown}{f'; {more} more' if more > 0 else ''})")
    else:
        lines.append("fallbacks: none")
    lines.extend(f"note: {note}" for note in plan.notes)
    lines.extend(f"warning: {warning}" for warning in plan.warnings)
    return lines
