"""Legacy block quants in torch: byte for byte what gguf-py and llama-quantize write."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from app.core.errors import UnsupportedError
from app.core.quant import can_quantize, dequantize, get_type, quantize
from app.core.quant.types import BlockSizeError

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def _hard_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows of 256 built to hit the corners of the reference arithmetic."""
    rows = (rng.standard_normal((24, 256)) * 0.02).astype(np.float32)
    rows[0] = 0  # all zeros: scale 0, inverse 0
    rows[1] = 0.5  # constant positive
    rows[2] = -0.25  # constant negative
    rows[3] = -np.abs(rows[3])  # negative-only blocks
    rows[4] = np.abs(rows[4])  # positive-only blocks
    rows[5] *= np.float32(1e30)  # scale overflows float16
    rows[6] *= np.float32(1e-30)  # scale underflows float16
    rows[7] *= np.float32(6e4)  # near float16's largest value
    rows[8, ::32] = 1.0  # one spike per block
    rows[9] = np.tile([-1.0, 1.0], 128)  # ties for the largest magnitude: the first one wins
    rows[10] = np.tile(np.float32([1.0, -1.0]), 128)
    rows[11] = (np.arange(256) % 17 - 8) / np.float32(8)  # exact halves after scaling
    rows[12] = (np.arange(256) % 33 - 16) / np.float32(16)
    rows[13, :128] = 0  # half-zero
    rows[14] = np.float32(1e-39)  # subnormal: the inverse scale overflows to inf
    rows[15] = np.where(np.arange(256) % 2, np.float32(3e-39), 0)
    rows[16] = rng.integers(-8, 8, 256).astype(np.float32)  # integers: ties everywhere
    return rows


@pytest.mark.parametrize("qtype", LEGACY)
def test_quantize_matches_gguf_py_on_random_and_corner_rows(qtype: str) -> None:
    rng = np.random.default_rng(7)
    data = np.concatenate([(rng.standard_normal((40, 256)) * 0.02).astype(np.float32),
                           (rng.standard_normal((8, 256)) * 3).astype(np.float32),
                           _hard_rows(rng)])
    with np.errstate(all="ignore"):  # gguf-py warns about the overflowing corner rows
        expected = quants.quantize(data, GGMLQuantizationType[qtype])
    got = quantize(torch.from_numpy(data), qtype)
    assert got.dtype == torch.uint8 and tuple(got.shape) == expected.shape
    mismatched = np.nonzero((got.numpy() != expected).any(axis=1))[0]
    assert mismatched.size == 0, f"rows differ from gguf-py: {mismatched.tolist()}"


@pytest.mark.parametrize("qtype", LEGACY)
def test_dequantize_is_bit_identical_to_gguf_py(qtype: str) -> None:
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    raw = quants.quantize(data, GGMLQuantizationType[qtype])
    expected = quants.dequantize(raw, GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(raw), qtype).numpy()
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    # and the round trip stays within one quantization step of the input
    step = {"Q8_0": 1 / 127, "Q4_0": 1 / 8, "Q4_1": 1 / 15, "Q5_0": 1 / 16, "Q5_1": 1 / 31}
    block_max = np.abs(data.reshape(-1, 32)).max(axis=1, keepdims=True)
    error = np.abs(got - data).reshape(-1, 32)
    assert (error <= 2 * block_max * step[qtype] + 1e-6).all()


@pytest.mark.parametrize("qtype", LEGACY)
def test_reproduces_llama_quantize_pure_files(qtype: str, kquants_reference: Path,
                                              tiny_reference_f32: dict[str, np.ndarray]) -> None:
    reader = gguf.GGUFReader(kquants_reference / f"tiny-llama-pure-{qtype}.gguf")
    checked = 0
    for tensor in reader.tensors:
        source = tiny_reference_f32[tensor.name]
        if source.ndim == 1:
            assert tensor.tensor_type == GGMLQuantizationType.F32
            continue
        assert tensor.tensor_type.name == qtype
        got = quantize(torch.from_numpy(source), qtype).numpy()
        assert np.array_equal(got, np.asarray(tensor.data)), tensor.name
        checked += 1
    assert checked == 30


def test_shapes_dtypes_and_devices_are_kept() -> None:
    weights = torch.randn(3, 4, 64, dtype=torch.bfloat16)
    raw = quantize(weights, "Q5_1")
    assert raw.shape == (3, 4, 2 * 24) and raw.device == weights.device
    expected = quants.quantize(weights.float().numpy(), GGMLQuantizationType.Q5_1)
    assert np.array_equal(raw.numpy(), expected)
    values = dequantize(raw, "Q5_1")
    assert values.shape == (3, 4, 64) and values.dtype == torch.float32
    assert dequantize(raw, "Q5_1", shape=(12, 64)).shape == (12, 64)
    # A non-contiguous view quantizes like its contiguous copy.
    wide = torch.randn(64, 128)
    assert torch.equal(quantize(wide.t(), "Q4_0"), quantize(wide.t().contiguous(), "Q4_0"))


def test_chunking_does_not_change_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.quant import codec

    weights = torch.randn(33, 96)
    whole = quantize(weights, "Q4_1")
    monkeypatch.setattr(codec, "CHUNK_ELEMENTS", 100)  # 3 blocks per chunk, ragged tail
    assert torch.equal(quantize(weights, "Q4_1"), whole)
    assert torch.equal(dequantize(whole, "Q4_1"),
                       torch.from_numpy(quants.dequantize(whole.numpy(),
                                                          GGMLQuantizationType.Q4_1)))


def test_rows_that_do_not_fit_the_block_raise_a_typed_error() -> None:
    with pytest.raises(BlockSizeError) as caught:
        quantize(torch.zeros(4, 40), "Q4_0", tensor="blk.0.attn_q.weight")
    error = caught.value
    assert isinstance(error, UnsupportedError) and error.exit_code == 2
    assert "blk.0.attn_q.weight" in str(error) and "40" in str(error) and "32" in str(error)
    assert error.n_per_row == 40 and error.qtype == get_type("Q4_0")


def test_writable_types() -> None:
    for name in ["F32", "F16", "BF16", *LEGACY, "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        assert can_quantize(name)
    for name in ["IQ4_NL", "TQ1_0", "Q8_K"]:
        assert not can_quantize(name)
    with pytest.raises(UnsupportedError, match="cannot write IQ4_NL"):
        quantize(torch.zeros(256), "IQ4_NL")
    with pytest.raises(UnsupportedError, match="torch.int32"):
        quantize(torch.zeros(32, dtype=torch.int32), "Q8_0")
