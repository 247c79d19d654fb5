"""The K-quant scale search's two implementations (compiled kernels on the CPU, torch
elsewhere) and the in-order sums the torch one rests on: each gives ggml's bytes, and both give
the same values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ggml_reference import ggml_quantize

from app.core.quant import kquant_search_cpu, quantize
from app.core.quant.kquant_search import make_qkx2_quants, make_qkx2_quants_torch, sequential_sum

pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def _in_order(terms: torch.Tensor, dim: int) -> torch.Tensor:
    """`s = t[0]; s += t[1]; ...` along dim, one torch add per position."""
    total = terms.select(dim, 0).clone()
    for i in range(1, terms.shape[dim]):
        total.add_(terms.select(dim, i))
    return total


@pytest.mark.parametrize("trailing", [1, 2, 3, 7, 64, 1031])
@pytest.mark.parametrize("length", [2, 5, 16, 17, 32, 33])
def test_sequential_sum_adds_in_order(length: int, trailing: int) -> None:
    generator = torch.Generator().manual_seed(length * 1000 + trailing)
    # Magnitudes spread over eight decades: any other order of the adds rounds differently.
    spread = torch.logspace(-4, 4, length).reshape(length, 1)
    terms = torch.randn(3, length, trailing, generator=generator) * spread
    terms[:, :, 0] = -0.0  # an all-(-0.0) sum stays -0.0, as in the C
    expected = _in_order(terms, 1)
    got = sequential_sum(terms, dim=1)
    assert torch.equal(got, expected) and torch.equal(got.signbit(), expected.signbit())
    out = torch.empty(3, trailing)
    assert sequential_sum(terms, dim=1, out=out) is out and torch.equal(out, expected)
    # A transposed view (the reduced axis innermost in memory) is summed in order too.
    view = terms[0].t().contiguous().t()
    assert torch.equal(sequential_sum(view), _in_order(view, 0))
    # From 0.0f: the same sums, but an all-(-0.0) one is +0.0.
    from_zero = torch.zeros(3, trailing).add_(terms[:, 0])
    for i in range(1, length):
        from_zero.add_(terms[:, i])
    got = sequential_sum(terms, dim=1, from_zero=True)
    assert torch.equal(got, from_zero) and torch.equal(got.signbit(), from_zero.signbit())


def assert_identical(fast: tuple[torch.Tensor, ...], reference: tuple[torch.Tensor, ...],
                     signed: int = 0) -> None:
    """Value for value; for the first `signed` results (scales and mins, whose zero's sign
    reaches the file) sign for sign too."""
    for index, (a, b) in enumerate(zip(fast, reference, strict=True)):
        assert torch.equal(a, b)
        if index < signed:
            assert torch.equal(a.signbit(), b.signbit())


def _awkward_rows(case: str, rng: np.random.Generator) -> np.ndarray:
    rows = (rng.standard_normal((12, 512)) * rng.lognormal(0, 1, (12, 1))).astype(np.float32)
    if case == "zeros":  # all-zero and constant sub-blocks, all-positive and negative ones
        rows[:, :48] = 0
        rows[3] = np.abs(rows[3])
        rows[4] = -np.abs(rows[4])
        rows[5, 256:] = 0
        rows[6, 100:200] = -0.25
        rows[7, :] = -0.0
    elif case == "coarse":  # few distinct values: ties everywhere in the searches
        rows = np.round(rows * 2).astype(np.float32) / 2
    return rows


TYPES = ["Q2_K", "Q4_K", "Q5_K", "Q6_K"]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("case", ["normal", "zeros", "coarse"])
@pytest.mark.parametrize("type_name", TYPES)
def test_both_searches_give_ggml_bytes(type_name: str, case: str, path: str, weighted: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(TYPES.index(type_name) * 10
                                + ["normal", "zeros", "coarse"].index(case))
    rows = _awkward_rows(case, rng)
    importance = rng.lognormal(0, 2, rows.shape[1]).astype(np.float32) if weighted else None
    if path == "torch":  # what every other device runs
        monkeypatch.setattr(kquant_search_cpu, "ENABLED", False)
    expected = ggml_quantize(rows, type_name, importance)
    ours = quantize(torch.from_numpy(rows), type_name,
                    importance=None if importance is None else torch.from_numpy(importance))
    differing = (ours.numpy() != expected).any(axis=1).sum()
    assert differing == 0, f"{differing} of {len(rows)} rows differ"


def test_compiled_and_torch_searches_agree_value_for_value() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy((rng.standard_normal((300, 32)) * 0.05).astype(np.float32))
    x[7] = 0.0
    x[8] = -0.5
    weights = x.abs() + 0.01
    for rows in (x, x[:1]):  # a lone sub-block too
        for nmax, rmin, nstep, use_mad in ((15, -1.0, 20, False), (3, -0.5, 15, True)):
            fast = make_qkx2_quants(rows, weights[:len(rows)], nmax, rmin, 0.1, nstep, use_mad)
            reference = make_qkx2_quants_torch(rows, weights[:len(rows)], nmax, rmin, 0.1,
                                               nstep, use_mad)
            assert all(a.device == x.device and a.dtype == torch.float32 for a in fast)
            # The sign of a zero scale or min reaches the file; a code is an integer.
            assert_identical(fast, reference, signed=2)


def test_q6_k_compiled_and_torch_searches_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.quant import kquants

    rng = np.random.default_rng(9)
    x = torch.from_numpy((rng.standard_normal((700, 16)) * 0.05).astype(np.float32))
    x[3] = 0.0
    x[4, :8] = 0.25
    x[5, 2] = -x[5].abs().max() * 2  # a negative peak
    fast = kquants._make_qx_quants(x)
    monkeypatch.setattr(kquant_search_cpu, "ENABLED", False)
    reference = kquants._make_qx_quants(x)
    assert_identical(fast, reference)


def test_weighted_searches_compiled_and_torch_agree_value_for_value() -> None:
    from app.core.quant.weighted_search import make_qkx3_quants, make_qkx3_quants_torch

    rng = np.random.default_rng(12)
    x = torch.from_numpy((rng.standard_normal((300, 32)) * 0.05).astype(np.float32))
    x[5] = 0.0
    x[6] = -0.25
    x[7] = x[7].abs()
    x[7, 3] = -0.0  # a zero minimum whose sign the stored minimum keeps
    weights = torch.from_numpy(rng.lognormal(0, 2, (300, 32)).astype(np.float32))
    weights[9] = 0.0
    for nmax, rmin, nstep in ((15, -0.9, 36), (31, -0.9, 36), (3, -0.9, 36), (1, -0.5, 5)):
        fast = make_qkx3_quants(x, weights, nmax, rmin, 0.05, nstep)
        reference = make_qkx3_quants_torch(x, weights, nmax, rmin, 0.05, nstep)
        assert_identical(fast, reference, signed=2)


def test_weighted_qx_search_compiled_and_torch_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.quant.weighted_search import make_qx_quants

    rng = np.random.default_rng(13)
    x = torch.from_numpy((rng.standard_normal((400, 16)) * 0.05).astype(np.float32))
    x[2] = 0.0
    x[3, :4] = 0.5
    weights = torch.from_numpy(rng.lognormal(0, 2, (400, 16)).astype(np.float32))
    weights[4] = 0.0
    for nmax in (4, 8, 16, 32):
        fast = make_qx_quants(x, weights, nmax)
        with monkeypatch.context() as patch:
            patch.setattr(kquant_search_cpu, "ENABLED", False)
            reference = make_qx_quants(x, weights, nmax)
        assert_identical(fast, reference)
