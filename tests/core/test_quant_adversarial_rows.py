"""Adversarial rows (denormal, huge, mixed magnitudes, zeros, -0.0) quantized by every type,
unweighted and importance-weighted, through both scale-search paths (NumPy on the CPU and the
torch one every other device runs): the bytes must be the bytes ggml writes, where float32
overflow, 1/denormal, float16 saturation and nearest_int's bit trick all come into play."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ggml_reference import ggml_quantize
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from app.core.quant import kquant_search_cpu, quantize

N = 512  # two super-blocks, sixteen 32-element blocks per row
ROWS = 6


pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def _normal(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((ROWS, N)) * scale).astype(np.float32)


def _denormal(rng: np.random.Generator) -> np.ndarray:
    return _normal(rng, 1e-39)


def _tiny(rng: np.random.Generator) -> np.ndarray:
    """Around GROUP_MAX_EPS (1e-15) and float16's smallest subnormal: scales that flush."""
    rows = _normal(rng, 1e-15)
    rows[::2] *= np.float32(1e-7)
    return rows


def _huge(rng: np.random.Generator) -> np.ndarray:
    return _normal(rng, 1e30)


def _mixed(rng: np.random.Generator) -> np.ndarray:
    """1e-30 and 1e30 side by side in every block (and every super-block)."""
    rows = _normal(rng, 1e-30)
    rows[:, ::7] = _normal(rng, 1e30)[:, ::7]
    return rows


def _near_max(rng: np.random.Generator) -> np.ndarray:
    """A few values near float32's largest (no infinity) among ordinary ones: sums, squares
    and differences overflow."""
    rows = _normal(rng)
    rows[:, ::37] = np.float32(3e38)
    rows[1, 5::41] = np.float32(-3e38)
    rows[2] = np.float32(3e38) * rng.choice([-1, 1], N).astype(np.float32)
    return rows


def _large(rng: np.random.Generator) -> np.ndarray:
    """Finite squares whose sums overflow: sigma2 and the searches' weighted sums reach inf."""
    rows = _normal(rng, 3e18)
    rows[::2] *= np.float32(1e-2)
    return rows


def _constant_and_spikes(rng: np.random.Generator) -> np.ndarray:
    """Flat sub-blocks (max == min) of every magnitude, and lone spikes among zeros."""
    rows = np.zeros((ROWS, N), np.float32)
    rows[0] = np.float32(1e30)
    rows[1] = np.float32(-3e-39)
    rows[2, ::16] = np.float32(2.5)
    rows[3, 5::32] = np.float32(-1e-39)
    rows[4] = np.repeat(rng.choice(np.float32([7e-39, -1e20, 0.5, -0.0, 6e4]), N // 16), 16)
    rows[5, ::2] = np.float32(-65504.0)
    rows[5, 1::2] = np.float32(65520.0)  # float16's largest and the first value that rounds to inf
    return rows


def _zeros_and_denormals(rng: np.random.Generator) -> np.ndarray:
    rows = _denormal(rng)
    rows[rng.random((ROWS, N)) < 0.5] = 0.0
    rows[1, :256] = 0.0
    rows[2, ::2] = -0.0
    return rows


def _negative_zero(rng: np.random.Generator) -> np.ndarray:
    rows = _normal(rng)
    rows[0] = -0.0
    rows[1, :256] = -0.0
    rows[2, rng.random(N) < 0.5] = -0.0
    rows[3] = np.abs(rows[3])
    rows[3, ::3] = -0.0
    rows[4, ::2] = 0.0
    rows[4, 1::2] = -0.0
    rows[4, 300] = 1.0
    # Blocks of +0.0 and -0.0 in random order: the C's min, max and largest magnitude keep
    # the first zero they meet, and its sign reaches d and m.
    rows[5] = np.where(rng.random(N) < 0.5, np.float32(-0.0), np.float32(0.0))
    return rows


CASES = {
    "denormal": _denormal,
    "tiny": _tiny,
    "huge": _huge,
    "mixed": _mixed,
    "near_max": _near_max,
    "large": _large,
    "constant_and_spikes": _constant_and_spikes,
    "zeros_and_denormals": _zeros_and_denormals,
    "negative_zero": _negative_zero,
}
TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
# ggml has no weighted path for Q8_0: llama-quantize ignores the matrix there.
WEIGHTED_TYPES = [t for t in TYPES if t != "Q8_0"]


def _differing_blocks(ours: np.ndarray, expected: np.ndarray, type_name: str) -> str:
    """'k of n blocks differ (rows ...)' over the blocks of every row."""
    size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
    blocks = (ours.reshape(-1, size) != expected.reshape(-1, size)).any(axis=1)
    rows = sorted({int(i) * size // ours.shape[1] for i in np.nonzero(blocks)[0]})
    return f"{int(blocks.sum())} of {blocks.size} blocks differ (rows {rows})"


def _importance(kind: str, rng: np.random.Generator) -> np.ndarray | None:
    """None, or an importance vector: lognormal, or with a quarter of its columns 0 (columns
    no calibration token reached, as in an expert that was never routed)."""
    if kind == "plain":
        return None
    importance = rng.lognormal(0, 2, N).astype(np.float32)
    if kind == "sparse":
        importance[rng.random(N) < 0.25] = 0.0
    return importance


@pytest.mark.parametrize("path", ["numpy", "torch", "cuda"])
@pytest.mark.parametrize("weighting", ["plain", "imatrix", "sparse"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("type_name", TYPES)
def test_adversarial_rows_give_ggml_bytes(type_name: str, case: str, weighting: str, path: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if weighting != "plain" and type_name not in WEIGHTED_TYPES:
        pytest.skip("ggml has no weighted path for this type")
    if path == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(TYPES.index(type_name) * 100 + list(CASES).index(case))
    with np.errstate(all="ignore"):
        rows = CASES[case](rng)
    importance = _importance(weighting, rng)
    if path == "torch":  # what every other device runs, here on the CPU
        monkeypatch.setattr(kquant_search_cpu, "ENABLED", False)
    device = "cuda" if path == "cuda" else "cpu"
    expected = ggml_quantize(rows, type_name, importance)
    with np.errstate(all="ignore"):
        ours = quantize(torch.from_numpy(rows).to(device), type_name,
                        importance=None if importance is None
                        else torch.from_numpy(importance).to(device))
    assert ours.device.type == device
    got = ours.cpu().numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), _differing_blocks(got, expected, type_name)
