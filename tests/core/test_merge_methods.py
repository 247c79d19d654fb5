"""Each merge method against values computed by hand and a direct torch version of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from app.core.merge import methods
from app.core.merge.config import Setting
from app.core.merge.params import evaluate, resolve


def test_linear_by_hand() -> None:
    a = torch.tensor([1.0, 2.0, -3.0])
    b = torch.tensor([3.0, 0.0, 1.0])
    assert torch.equal(methods.linear([a, b], [1.0, 3.0]), torch.tensor([2.5, 0.5, 0.0]))
    assert torch.equal(methods.linear([a, b], [1.0, 3.0], normalize=False),
                       torch.tensor([10.0, 2.0, 0.0]))


def test_linear_matches_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 5, generator=gen, dtype=torch.bfloat16) for _ in range(3)]
    ws = [0.2, 0.5, 0.9]
    expected = sum(w * x.float() for w, x in zip(ws, xs, strict=True)) / sum(ws)
    torch.testing.assert_close(methods.linear(xs, ws), expected, rtol=1e-6, atol=1e-6)


def test_slerp_by_hand_orthogonal_vectors() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 2.0])
    # θ = 90°, t = 1/3: sin(60°)/sin(90°)·a + sin(30°)/sin(90°)·b
    result = methods.slerp(1 / 3, a, b)
    torch.testing.assert_close(result, torch.tensor([math.sqrt(3) / 2, 0.5 * 2]))
    assert torch.equal(methods.slerp(0.0, a, b), a)


def test_slerp_matches_formula_and_is_linear_when_colinear() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 7, generator=gen), torch.randn(6, 7, generator=gen)
    t = 0.3
    an, bn = a.flatten() / a.norm(), b.flatten() / b.norm()
    theta = torch.acos((an * bn).sum())
    expected = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    torch.testing.assert_close(methods.slerp(t, a, b), expected, rtol=1e-5, atol=1e-6)
    colinear = methods.slerp(0.25, a, 2 * a)
    torch.testing.assert_close(colinear, 0.75 * a + 0.25 * 2 * a)
    antipodal = methods.slerp(0.5, a, -a)
    torch.testing.assert_close(antipodal, torch.zeros_like(a))


def test_task_arithmetic_by_hand() -> None:
    base = torch.tensor([1.0, 1.0])
    x1, x2 = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0])
    result = methods.task_arithmetic_family("task_arithmetic", base, [x1, x2], [1.0, 0.5],
                                            [1.0, 1.0], normalize=False, rescale=False,
                                            lam=2.0)
    # base + 2·(1·[1, -1] + 0.5·[0, 2]) = [3, 1]
    assert torch.equal(result, torch.tensor([3.0, 1.0]))


def test_ties_by_hand() -> None:
    base = torch.zeros(4)
    d1 = torch.tensor([4.0, -1.0, 0.5, -3.0])
    d2 = torch.tensor([-2.0, -2.0, 1.0, 0.25])
    result = methods.task_arithmetic_family("ties", base, [d1, d2], [1.0, 1.0], [0.5, 0.5],
                                            normalize=True, rescale=False)
    # top half by |δ|: d1 keeps 4, -3; d2 keeps -2, -2. Signs: +2, -2, 0(+), -3.
    # element 0: only d1 (+4) agrees → 4/1; element 1: d2 -2 → -2/1; element 2: none → 0;
    # element 3: d1 -3 → -3/1.
    assert torch.equal(result, torch.tensor([4.0, -2.0, 0.0, -3.0]))


def _ties_reference(base: torch.Tensor, others: list[torch.Tensor], weights: list[float],
                    density: float, normalize: bool) -> torch.Tensor:
    deltas = []
    for other in others:
        delta = other - base
        k = max(1, int(density * delta.numel()))
        threshold = delta.abs().flatten().sort(descending=True).values[k - 1]
        deltas.append(torch.where(delta.abs() >= threshold, delta, 0.0))
    weighted = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
    sign = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = weighted.sign() == sign
    mixed = (weighted * agree).sum(0)
    divisor = (torch.tensor(weights).reshape(-1, 1, 1) * agree).sum(0)
    divisor[divisor == 0] = 1
    return base + (mixed / divisor if normalize else mixed)


@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_formula(normalize: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(16, 12, generator=gen)
    others = [base + torch.randn(16, 12, generator=gen) for _ in range(3)]
    weights = [0.6, 0.3, 1.1]
    result = methods.task_arithmetic_family("ties", base, others, weights, [0.4] * 3,
                                            normalize=normalize, rescale=False)
    expected = _ties_reference(base, others, weights, 0.4, normalize)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)


def test_dare_drops_at_keep_probability_and_rescales_l1() -> None:
    base = torch.zeros(200, 100)
    other = torch.ones(200, 100)
    result = methods.task_arithmetic_family("dare_linear", base, [other], [1.0], [0.3],
                                            normalize=False, rescale=True, seeds=[7])
    kept = (result != 0).float().mean().item()
    assert 0.28 < kept < 0.32
    # Rescaled so the L1 norm of the delta is unchanged.
    assert result.abs().sum().item() == pytest.approx(other.abs().sum().item(), rel=1e-5)
    unscaled = methods.task_arithmetic_family("dare_linear", base, [other], [1.0], [0.3],
                                              normalize=False, rescale=False, seeds=[7])
    assert torch.equal(unscaled != 0, result != 0)
    assert set(unscaled.unique().tolist()) == {0.0, 1.0}


def test_dare_ties_matches_formula_with_the_same_masks() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(10, 9, generator=gen)
    others = [base + torch.randn(10, 9, generator=gen) for _ in range(2)]
    seeds = [11, 12]
    result = methods.task_arithmetic_family("dare_ties", base, others, [1.0, 0.5], [0.5, 0.8],
                                            normalize=False, rescale=True, seeds=seeds)
    weighted = []
    for other, density, seed, weight in zip(others, [0.5, 0.8], seeds, [1.0, 0.5],
                                            strict=True):
        delta = other - base
        mask = methods.bernoulli_mask(delta.shape, density, seed, delta.device)
        kept = delta * mask
        kept = kept * (delta.abs().sum() / kept.abs().sum())
        weighted.append(weight * kept)
    stacked = torch.stack(weighted)
    agree = stacked.sign() == torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    torch.testing.assert_close(result, base + (stacked * agree).sum(0), rtol=1e-6, atol=1e-6)


def test_dare_masks_depend_on_seed_tensor_and_input_only() -> None:
    s1 = methods.tensor_seed(0, "model.layers.0.mlp.up_proj.weight", 0)
    assert s1 == methods.tensor_seed(0, "model.layers.0.mlp.up_proj.weight", 0)
    assert s1 != methods.tensor_seed(0, "model.layers.0.mlp.up_proj.weight", 1)
    assert s1 != methods.tensor_seed(1, "model.layers.0.mlp.up_proj.weight", 0)
    m1 = methods.bernoulli_mask(torch.Size([50]), 0.5, s1, torch.device("cpu"))
    m2 = methods.bernoulli_mask(torch.Size([50]), 0.5, s1, torch.device("cpu"))
    assert torch.equal(m1, m2)


def test_methods_keep_the_inputs_device() -> None:
    device = torch.device("meta")
    a = torch.empty(4, 4, device=device)
    assert methods.linear([a, a], [1.0, 1.0]).device == device
    assert methods.passthrough(a, 2.0).device == device


def test_parameters_gradients_and_filters() -> None:
    # A gradient is interpolated across the layers: t = layer / (layers - 1).
    assert evaluate([0.0, 1.0], "x", 0.25) == pytest.approx(0.25)
    assert evaluate([0.0, 0.5, 0.3, 0.7, 1.0], "x", 0.5) == pytest.approx(0.3)
    assert evaluate([0.0, 0.5, 0.3, 0.7, 1.0], "x", 0.625) == pytest.approx(0.5)
    filtered = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.9},
                {"value": 0.5}]
    assert evaluate(filtered, "model.layers.3.self_attn.q_proj.weight", 1.0) == 1
    assert evaluate(filtered, "model.layers.3.mlp.up_proj.weight", 0.2) == 0.9
    assert evaluate(filtered, "model.norm.weight", 0.0) == 0.5
    scopes = [{"weight": Setting(0.3, 4)}, {}, {"weight": Setting(0.9, 12),
                                                "density": Setting(0.5, 13)}]
    assert resolve("weight", scopes, "t", 0.0) == (0.3, 4)
    assert resolve("density", scopes, "t", 0.0) == (0.5, 13)
    assert resolve("lambda", scopes, "t", 0.0, 1.0) == (1.0, None)
    with pytest.raises(KeyError):
        resolve("t", scopes, "t", 0.0)
