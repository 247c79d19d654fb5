"""Q2_K, Q3_K, Q4_K and Q5_K written from torch: the bytes llama.cpp's quantizer writes, tensor
by tensor, on generated real-valued models; shape-only (meta) tensors; chunking; round trips;
and weights that cannot be quantized."""

from __future__ import annotations

from collections.abc import Iterator

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from app.core.errors import FormatError
from app.core.quant import dequantize, get_type, quantize
from app.core.quant.kquant_search import divide, nearest_int
from reference_models import ReferenceFiles, f32_tensors, real_valued_weights

LOW_BIT_KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K"]


@pytest.fixture(autouse=True)
def single_threaded_torch() -> Iterator[None]:
    """As the converter's workers run them: the searches are many small ops, which a second
    intra-op thread slows down on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _differing_blocks(got: np.ndarray, expected: np.ndarray, type_size: int) -> int:
    return int((got.reshape(-1, type_size) != expected.reshape(-1, type_size)).any(1).sum())


@pytest.mark.parametrize("qtype", LOW_BIT_KQUANTS)
def test_reproduces_llama_quantize_pure(qtype: str, reference_files: ReferenceFiles) -> None:
    source = f32_tensors(reference_files.source("tiny-llama"))
    reader = gguf.GGUFReader(reference_files.pure("tiny-llama", qtype))
    spec = get_type(qtype)
    differing: dict[str, int] = {}
    for tensor in reader.tensors:
        if tensor.tensor_type.name != qtype:
            continue
        got = quantize(torch.from_numpy(source[tensor.name]), qtype).numpy()
        count = _differing_blocks(got, np.asarray(tensor.data), spec.type_size)
        if count:
            differing[tensor.name] = count
    assert differing == {}  # tensor → blocks that differ from llama.cpp's
    assert sum(t.tensor_type.name == qtype for t in reader.tensors) == 26


@pytest.mark.parametrize("qtype", LOW_BIT_KQUANTS)
def test_meta_tensors_give_the_shape(qtype: str) -> None:
    spec = get_type(qtype)
    raw = quantize(torch.empty(3, 5, 512, device="meta"), qtype)
    assert raw.device.type == "meta" and raw.dtype == torch.uint8
    assert tuple(raw.shape) == (3, 5, 2 * spec.type_size)


@pytest.mark.parametrize("qtype", LOW_BIT_KQUANTS)
def test_chunking_does_not_change_the_bytes(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.quant import codec

    weights = torch.from_numpy(real_valued_weights(np.random.default_rng(3), (6, 768)))
    whole = quantize(weights, qtype)
    monkeypatch.setattr(codec, "CHUNK_ELEMENTS", 256 * 3 * codec._CHUNK_DIVISOR[qtype])
    assert torch.equal(quantize(weights, qtype), whole)


# Relative RMS error of a round trip on normal weights: 2-bit about 35 %, 6-bit about 1 %.
RMS_BOUNDS = {"Q2_K": 0.45, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06}


@pytest.mark.parametrize("qtype", LOW_BIT_KQUANTS)
def test_round_trip(qtype: str) -> None:
    weights = torch.randn(8, 512, generator=torch.Generator().manual_seed(5)) * 0.02
    raw = quantize(weights, qtype)
    assert raw.shape == (8, 2 * get_type(qtype).type_size)
    restored = dequantize(raw, qtype)
    expected = quants.dequantize(raw.numpy(), GGMLQuantizationType[qtype])
    assert np.array_equal(restored.numpy(), expected)
    error = (restored - weights).pow(2).mean().sqrt() / weights.pow(2).mean().sqrt()
    assert error < RMS_BOUNDS[qtype]
    # One bit fewer is worse: the types are ordered by quality.
    if qtype != "Q2_K":
        lower = LOW_BIT_KQUANTS[LOW_BIT_KQUANTS.index(qtype) - 1]
        coarse = dequantize(quantize(weights, lower), lower)
        assert (coarse - weights).pow(2).mean() > (restored - weights).pow(2).mean()


@pytest.mark.parametrize("qtype", LOW_BIT_KQUANTS)
def test_zero_and_constant_blocks(qtype: str) -> None:
    weights = torch.zeros(3, 256)
    weights[1] = 0.125
    weights[2] = -0.5
    raw = quantize(weights, qtype)
    assert not raw[0].any()  # an all-zero block is all-zero bytes (+0.0 scales, no -0.0)
    restored = dequantize(raw, qtype)
    assert torch.allclose(restored, weights, atol=0.02)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_tensor(bad: float) -> None:
    weights = torch.randn(2, 512)
    weights[1, 300] = bad
    for qtype in ("Q4_K", "Q8_0"):
        with pytest.raises(FormatError, match="blk.3.ffn_up.weight") as caught:
            quantize(weights, qtype, tensor="blk.3.ffn_up.weight")
        assert "element 812" in str(caught.value)


def test_importance_is_for_the_weighted_quantizers() -> None:
    weights = torch.randn(2, 256)
    assert torch.equal(quantize(weights, "Q4_K", importance=None), quantize(weights, "Q4_K"))
    # Q8_0 has no weighted path in ggml: the matrix is ignored. Q4_K's weighted search is taken.
    importance = torch.linspace(0.01, 10.0, 256)
    assert torch.equal(quantize(weights, "Q8_0", importance=importance),
                       quantize(weights, "Q8_0"))
    assert not torch.equal(quantize(weights, "Q4_K", importance=importance),
                           quantize(weights, "Q4_K"))


def test_primitives_round_and_divide_like_c() -> None:
    values = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, 1e7, float("inf")])
    # Half to even; huge values give nearest_int's bit-trick result, not round()'s.
    assert nearest_int(values)[:6].tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 3.0]
    assert nearest_int(values)[6].item() != 1e7
    x = torch.rand(10_000) * 3 + 0.01
    assert np.array_equal(divide(3.0, x).numpy(), np.float32(3.0) / x.numpy())
