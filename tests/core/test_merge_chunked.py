"""The chunked methods the job runs give the whole-tensor formulas' results, for any chunking."""

from __future__ import annotations

import pytest
import torch

from app.core.merge import chunked, methods


def inputs(dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(37, 11, generator=gen)
    # bf16 deltas repeat: TIES meets magnitudes equal to its threshold.
    return [t.to(dtype) for t in (base, base + torch.randn(37, 11, generator=gen) * 0.1,
                                  base - torch.randn(37, 11, generator=gen) * 0.1)]


def run(method: str, xs: list[torch.Tensor], params: dict, chunk: int) -> torch.Tensor:
    out = torch.empty(xs[0].numel(), dtype=torch.float32)
    chunked.merge_into(method, [x.reshape(-1) for x in xs], params, out, chunk)
    return out.reshape(xs[0].shape)


@pytest.mark.parametrize("chunk", [50, 1 << 22])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties", "dare_linear"])
def test_task_arithmetic_family(method: str, chunk: int) -> None:
    xs = inputs()
    params = {"weights": [0.7, 0.4], "densities": [0.3, 0.6], "normalize": method == "ties",
              "rescale": True, "lambda": 0.9, "seeds": [21, 22]}
    expected = methods.task_arithmetic_family(
        method, xs[0], xs[1:], params["weights"], params["densities"],
        normalize=params["normalize"], rescale=True, lam=0.9, seeds=params["seeds"])
    torch.testing.assert_close(run(method, xs, params, chunk), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [5, 1 << 22])
def test_linear_slerp_passthrough(chunk: int) -> None:
    xs = inputs(torch.float16)
    torch.testing.assert_close(
        run("linear", xs, {"weights": [1, 2, 3], "normalize": True}, chunk),
        methods.linear(xs, [1, 2, 3]))
    torch.testing.assert_close(run("slerp", xs[:2], {"t": 0.3}, chunk),
                               methods.slerp(0.3, xs[0], xs[1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(run("passthrough", xs[:1], {"scale": 2.0}, chunk),
                               methods.passthrough(xs[0], 2.0))


def test_kth_largest_is_exact() -> None:
    values = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    pieces = chunked.chunks(1000, 33)
    values[10:20] = values[5]  # ties at the threshold
    for k in (1, 17, 500, 1000):
        expected = float(values.sort(descending=True).values[k - 1])
        found = chunked.kth_largest(lambda p: values[p[0]:p[1]], pieces, k, torch.device("cpu"))
        assert found == (expected, int((values > expected).sum()))


def test_dare_masks_do_not_depend_on_chunking() -> None:
    whole = methods.mask_range(5, 0, 3 * methods.MASK_BLOCK + 10, 0.5, torch.device("cpu"))
    start, end = methods.MASK_BLOCK - 3, 2 * methods.MASK_BLOCK + 4
    assert torch.equal(methods.mask_range(5, start, end, 0.5, torch.device("cpu")),
                       whole[start:end])


def test_stored_tensors_read_in_slices(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    import factories
    from app.core.merge.config import ModelRef
    from app.core.merge.sources import open_source

    folder = factories.make_hf_model(tmp_path / "m", "llama", dtype="bfloat16",
                                     with_tokenizer=False)
    source = open_source(ModelRef(folder))
    stored = load_file(folder / "model.safetensors")
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"):
        whole = stored[name].reshape(-1)
        slices = source.slices(name, torch.device("cpu"))
        assert slices.numel() == whole.numel()
        for start, end in chunked.chunks(whole.numel(), 1000):
            piece = slices[start:end]
            assert piece.dtype == torch.bfloat16 and torch.equal(piece, whole[start:end])
        assert torch.equal(slices[:], whole)
