"""The numbers of a quality comparison: windows over a long text, perplexity, KL, top-1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.generate.compare_severity import severity_words


@dataclass(frozen=True)
class Window:
    """Feed tokens [start, end); score the targets first_target..end (each predicted by the
    position before it). Later windows re-read `overlap` tokens so no target lacks context."""

    start: int
    end: int
    first_target: int

    @property
    def rows(self) -> slice:
        """Rows of the window's logits that predict the scored targets."""
        return slice(self.first_target - 1 - self.start, self.end - self.start)

    @property
    def targets(self) -> range:
        return range(self.first_target, self.end + 1)


def plan_windows(n_tokens: int, window: int, overlap: int | None = None) -> list[Window]:
    """Windows covering every target 1..n_tokens-1 exactly once."""
    if window < 2:
        raise ValueError(f"a window must hold at least 2 tokens, not {window}")
    if overlap is None:
        overlap = window // 4
    overlap = min(overlap, window - 1)
    windows: list[Window] = []
    next_target = 1
    while next_target <= n_tokens - 1:
        start = 0 if not windows else next_target - 1 - overlap
        end = min(start + window, n_tokens - 1)
        windows.append(Window(start, end, next_target))
        next_target = end + 1
    return windows


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logprobs: np.ndarray, cand_logprobs: np.ndarray) -> np.ndarray:
    """KL(P_ref || P_cand) per row, in nats (what llama-perplexity --kl-divergence reports)."""
    ref = ref_logprobs.astype(np.float64)
    kl = (np.exp(ref) * (ref - cand_logprobs.astype(np.float64))).sum(axis=-1)
    return np.maximum(kl, 0.0)  # rounding can make identical distributions a hair negative


def perplexity(nll: np.ndarray) -> float:
    return float(math.exp(float(np.mean(nll)))) if nll.size else float("nan")


# The smallest KL a comparison can tell from zero: the same weights computed in the reference's
# dtype against exact arithmetic. Measured: an F32 GGUF against its own bf16 source scored KL
# 9e-4 with the reference in bfloat16 and 6.5e-7 in float32; float16 keeps 3 more mantissa bits
# than bfloat16. llama.cpp against transformers on identical quantized weights differs by a few
# 1e-3 (llama.cpp quantizes activations for quantized matmuls).
DTYPE_NOISE_FLOOR = {"float32": 1e-6, "float16": 1.5e-4, "bfloat16": 1e-3}
CROSS_RUNTIME_NOISE_FLOOR = 3e-3


def noise_floor(reference_dtype: str, ref_backend: str, candidate_backend: str) -> float:
    """The KL below which this comparison cannot tell the candidate from the reference."""
    floor = DTYPE_NOISE_FLOOR.get(reference_dtype, DTYPE_NOISE_FLOOR["bfloat16"])
    if ref_backend.split()[0] != candidate_backend.split()[0]:
        floor = max(floor, CROSS_RUNTIME_NOISE_FLOOR)
    return floor


def percent_floor(fraction: float) -> str:
    """97.36 -> '97.3': a rounded-up '100 %' would claim agreement that is not there."""
    value = math.floor(fraction * 1000) / 10
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"


def verdict(label: str, kl_mean: float, top1: float, floor: float | None = None) -> str:
    words = severity_words(kl_mean, top1, floor)
    return (f"{label} keeps {percent_floor(top1)} % top-1 agreement with the reference "
            f"(mean KL {kl_mean:.4f}): {words}")
