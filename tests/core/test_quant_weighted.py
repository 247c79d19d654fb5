"""Quantizers weighted by an importance matrix: byte-identical to llama-quantize --imatrix."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from ggml_reference import ggml_quantize

from app.core.errors import FormatError, UnsupportedError
from app.core.quant import quantize
from app.core.quant.imatrix_file import read_imatrix
from app.core.quant.weighted import WEIGHTED_QUANTIZERS

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"
MIXES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q4_0"]


def f32_tensors() -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(DATA / "tiny-llama-2l-rows32-F32.gguf")
    return {t.name: np.array(t.data).reshape(-1, int(t.shape[0])) for t in reader.tensors}


@pytest.mark.parametrize("mix", MIXES)
def test_every_covered_tensor_equals_llama_quantize(mix: str) -> None:
    matrix = read_imatrix(DATA / "imatrix.gguf")
    sources = f32_tensors()
    checked = []
    for tensor in gguf.GGUFReader(DATA / f"imatrix-{mix}-rows32.gguf").tensors:
        weights = matrix.weights(tensor.name)
        if weights is None:
            continue
        type_name = tensor.tensor_type.name
        ours = quantize(torch.from_numpy(sources[tensor.name]), type_name,
                        importance=torch.from_numpy(weights[0]), tensor=tensor.name)
        reference = np.array(tensor.data).reshape(ours.shape)
        differing = (ours.numpy() != reference).any(axis=1).sum()
        assert differing == 0, f"{tensor.name} ({type_name}): {differing} rows differ"
        checked.append(type_name)
    assert len(checked) == 6  # token_embd has no entry in the matrix


def test_the_reference_types_cover_every_k_quant_and_q4_0() -> None:
    found = {t.tensor_type.name for mix in MIXES
             for t in gguf.GGUFReader(DATA / f"imatrix-{mix}-rows32.gguf").tensors}
    assert {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0"} <= found


def _awkward_rows(case: str, rng: np.random.Generator) -> np.ndarray:
    rows = (rng.standard_normal((24, 512)) * rng.lognormal(0, 1, (24, 1))).astype(np.float32)
    if case == "zeros":  # all-zero groups, blocks with a zero minimum, all-positive rows
        rows[:, :48] = 0
        rows[3] = np.abs(rows[3])
        rows[5, 256:] = 0
    elif case == "coarse":  # few distinct values: ties everywhere in the searches
        rows = np.round(rows * 2).astype(np.float32) / 2
    return rows


@pytest.mark.parametrize("case", ["normal", "zeros", "coarse"])
@pytest.mark.parametrize("type_name", sorted(WEIGHTED_QUANTIZERS))
def test_weighted_quantizers_equal_ggml(type_name: str, case: str) -> None:
    rng = np.random.default_rng(abs(hash((type_name, case))) % 2**32)
    rows = _awkward_rows(case, rng)
    importance = rng.lognormal(0, 2, 512).astype(np.float32)
    importance[:7] = 1.0  # a column never seen weighs 1 after loading
    expected = ggml_quantize(rows, type_name, importance)
    ours = quantize(torch.from_numpy(rows), type_name, importance=torch.from_numpy(importance))
    differing = (ours.numpy() != expected).any(axis=1).sum()
    assert differing == 0, f"{differing} of {len(rows)} rows differ"


def test_stacked_experts_take_one_row_of_weights_each() -> None:
    rng = np.random.default_rng(7)
    experts = rng.standard_normal((3, 8, 256)).astype(np.float32)
    importance = rng.lognormal(0, 1, (3, 256)).astype(np.float32)
    ours = quantize(torch.from_numpy(experts), "Q4_K", importance=torch.from_numpy(importance))
    for expert in range(3):
        expected = ggml_quantize(experts[expert], "Q4_K", importance[expert])
        assert np.array_equal(ours[expert].numpy(), expected)


def test_q8_0_and_floats_ignore_the_matrix() -> None:
    values = torch.randn(4, 64)
    importance = torch.rand(64) + 0.5
    for type_name in ("Q8_0", "F16", "F32"):
        assert torch.equal(quantize(values, type_name, importance=importance),
                           quantize(values, type_name))
    # And the matrix changes what a weighted type writes.
    assert not torch.equal(quantize(values, "Q4_0", importance=importance),
                           quantize(values, "Q4_0"))


def test_weights_of_the_wrong_size_are_refused_naming_the_tensor() -> None:
    with pytest.raises(UnsupportedError, match="blk.0.ffn_up.weight.*another model"):
        quantize(torch.randn(4, 256), "Q4_K", importance=torch.ones(512),
                 tensor="blk.0.ffn_up.weight")
    with pytest.raises(UnsupportedError, match="do not fit"):
        quantize(torch.randn(4, 256), "Q4_K", importance=torch.ones(3, 256))


def test_non_finite_weights_stop_naming_the_tensor() -> None:
    values = torch.randn(4, 256)
    values[2, 7] = float("nan")
    with pytest.raises(FormatError, match="blk.3.attn_q.weight.*NaN"):
        quantize(values, "Q4_K", importance=torch.ones(256), tensor="blk.3.attn_q.weight")
