"""Q6_K written from torch: llama-quantize's bytes on real weights, and a line-by-line scalar
port of ggml's quantize_row_q6_K_ref on blocks built to reach its corner cases."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from app.core.quant import can_quantize, dequantize, quantize

F = np.float32


def _nearest_int(value: np.float32) -> int:
    bits = np.array([F(value) + F(12582912.0)], dtype=np.float32).view(np.int32)[0]
    return int((bits & 0x7FFFFF) - 0x400000)


def _make_qx_quants(x: np.ndarray) -> tuple[np.float32, list[int]]:
    """make_qx_quants(16, 32, x, L, 1, NULL) with float32 scalars, as in ggml-quants.c."""
    nmax = 32
    amax, peak = F(0), F(0)
    for value in x:
        if abs(value) > amax:
            amax, peak = abs(value), value
    if amax < F(1e-15):
        return F(0), [0] * 16

    def sums(iscale: np.float32) -> tuple[np.float32, np.float32, list[int]]:
        sum_lx, sum_l2, levels = F(0), F(0), []
        for value in x:
            level = max(-nmax, min(nmax - 1, _nearest_int(iscale * value)))
            levels.append(level + nmax)
            weight = value * value
            sum_lx = sum_lx + weight * value * F(level)
            sum_l2 = sum_l2 + weight * F(level) * F(level)
        return sum_lx, sum_l2, levels

    sum_lx, sum_l2, codes = sums(F(-nmax) / peak)
    scale = sum_lx / sum_l2 if sum_l2 else F(0)
    best = scale * sum_lx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(step)) / peak
        lx, l2, levels = sums(iscale)
        if l2 > 0 and lx * lx > best * l2:
            codes, scale = levels, lx / l2
            best = scale * lx
    return scale, codes


def _q6_k_reference(block: np.ndarray) -> bytes:
    """quantize_row_q6_K_ref for one block of 256 floats."""
    codes, scales = [0] * 256, []
    max_scale, max_abs = F(0), F(0)
    for sub in range(16):
        scale, sub_codes = _make_qx_quants(block[16 * sub:16 * sub + 16])
        codes[16 * sub:16 * sub + 16] = sub_codes
        scales.append(scale)
        if abs(scale) > max_abs:
            max_abs, max_scale = abs(scale), scale
    if max_abs < F(1e-15):
        return bytes(210)
    iscale = F(-128.0) / max_scale
    d = np.float16(F(1) / iscale)
    int_scales = [min(127, _nearest_int(iscale * s)) for s in scales]
    for sub in range(16):
        sub_d = F(d) * F(int_scales[sub])
        if not sub_d:
            continue
        for i in range(16):
            level = _nearest_int(block[16 * sub + i] / sub_d)
            codes[16 * sub + i] = max(-32, min(31, level)) + 32
    ql, qh = bytearray(128), bytearray(64)
    for half in range(2):
        j = 128 * half
        for lane in range(32):
            q1, q2, q3, q4 = (codes[j + lane + 32 * k] for k in range(4))
            ql[64 * half + lane] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[64 * half + lane + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[32 * half + lane] = ((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4)
                                    | ((q4 >> 4) << 6))
    return (bytes(ql) + bytes(qh) + np.array(int_scales, np.int8).tobytes()
            + np.array([d], np.float16).tobytes())


def _corner_blocks() -> np.ndarray:
    rng = np.random.default_rng(17)
    blocks = (rng.standard_normal((14, 256)) * 0.02).astype(np.float32)
    blocks[0] = 0  # the whole block is zero: 210 zero bytes
    blocks[1, 32:64] = 0  # two all-zero sub-blocks inside a normal block
    blocks[2] = 0.125  # constant
    blocks[3] = -np.abs(blocks[3])  # negative only
    blocks[4, 5] = 3.0  # one spike: most sub-block scales round to 0 or 1
    blocks[5] *= np.logspace(-6, 0, 256).astype(np.float32)  # magnitudes across 6 decades
    blocks[6] = rng.integers(-31, 32, 256) / np.float32(64)  # exact levels, ties everywhere
    blocks[7] = np.tile(np.float32([1, -1]), 128)  # equal magnitudes: first maximum wins
    blocks[8] *= np.float32(1e6)
    blocks[9] *= np.float32(1e-9)
    blocks[10, :16] = np.float32(1e-16)  # a sub-block below GROUP_MAX_EPS
    blocks[11] = np.float32(2e-15)  # every sub-block just above GROUP_MAX_EPS
    blocks[12, ::2] = 0  # half zeros
    return blocks


def test_q6_k_matches_the_scalar_reference_on_corner_blocks() -> None:
    blocks = _corner_blocks()
    got = quantize(torch.from_numpy(blocks), "Q6_K").numpy()
    assert got.shape == (14, 210)
    with np.errstate(all="ignore"):
        for index, block in enumerate(blocks):
            assert got[index].tobytes() == _q6_k_reference(block), f"block {index}"
    assert not got[0].any()


def test_q6_k_reproduces_llama_quantize(kquants_reference: Path,
                                       tiny_reference_f32: dict[str, np.ndarray]) -> None:
    reader = gguf.GGUFReader(kquants_reference / "tiny-llama-pure-Q6_K.gguf")
    checked = 0
    for tensor in reader.tensors:
        if tensor.tensor_type.name != "Q6_K":
            continue
        got = quantize(torch.from_numpy(tiny_reference_f32[tensor.name]), "Q6_K")
        assert np.array_equal(got.numpy(), np.asarray(tensor.data)), tensor.name
        checked += 1
    assert checked == 26  # 4 layers × 6 + token_embd + output; ffn_down (352) falls back


def test_q6_k_round_trip() -> None:
    assert can_quantize("Q6_K")
    weights = torch.randn(8, 512) * 0.02
    raw = quantize(weights, "Q6_K")
    restored = dequantize(raw, "Q6_K")
    expected = quants.dequantize(raw.numpy(), GGMLQuantizationType.Q6_K)
    assert np.array_equal(restored.numpy(), expected)
    error = (restored - weights).pow(2).mean().sqrt() / weights.pow(2).mean().sqrt()
    assert error < 0.02  # 6 bits: about 1 % RMS error on normal weights


@pytest.mark.parametrize("chunk", [256, 256 * 3])
def test_q6_k_chunking_does_not_change_the_bytes(chunk: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.quant import codec

    weights = torch.randn(5, 768) * 0.02
    whole = quantize(weights, "Q6_K")
    monkeypatch.setattr(codec, "CHUNK_ELEMENTS", chunk * 16)  # Q6_K divides it by 16
    assert torch.equal(quantize(weights, "Q6_K"), whole)
