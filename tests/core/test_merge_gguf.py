"""GGUF inputs: dequantized tensor by tensor, named and ordered as the HF base model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import factories
from app.core.errors import BadInputError
from app.core.jobs import RecordingReporter
from app.core.merge import MergeRequest


def linear_yaml(a: Path, b: Path) -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n"
            f"  - model: {b}\n    parameters: {{weight: 3}}\n")


def merged(target: Path, config: str) -> dict[str, torch.Tensor]:
    MergeRequest(target, config_text=config).run(RecordingReporter())
    return load_file(target / "model.safetensors")


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_f32_gguf_input_merges_like_its_hf_source(family: str, tmp_path: Path) -> None:
    from app.core.convert import ConvertRequest

    a = factories.make_hf_model(tmp_path / "a", family, seed=1)
    b = factories.make_hf_model(tmp_path / "b", family, seed=2, with_tokenizer=False)
    gguf_b = tmp_path / "b.gguf"
    # Modelyard's converter: llama's Q/K rows permuted, Mixtral's experts stacked.
    ConvertRequest(b, gguf_b, "F32", device="cpu", pure=True).run(RecordingReporter())
    reference = merged(tmp_path / "hf", linear_yaml(a, b))
    from_gguf = merged(tmp_path / "gguf", linear_yaml(a, gguf_b))
    assert from_gguf.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(from_gguf[name], value, rtol=1e-6, atol=1e-6)


def test_quantized_gguf_input_is_dequantized(tmp_path: Path) -> None:
    a = factories.make_hf_model(tmp_path / "a", "llama", seed=1)
    b = factories.make_hf_model(tmp_path / "b", "llama", seed=2)
    gguf_b = factories.make_gguf_from_hf(b, tmp_path / "b-q8.gguf", "Q8_0")
    reference = merged(tmp_path / "hf", linear_yaml(a, b))
    from_gguf = merged(tmp_path / "gguf", linear_yaml(a, gguf_b))
    assert from_gguf.keys() == reference.keys()
    for name, value in reference.items():
        # Q8_0 keeps about 1/127 of each block's largest value.
        assert (from_gguf[name] - value).abs().max() < 0.75 * value.abs().max() / 100


def test_a_gguf_base_is_refused(tmp_path: Path) -> None:
    a = factories.make_hf_model(tmp_path / "a", "llama", seed=1)
    gguf_a = factories.make_gguf_from_hf(a, tmp_path / "a.gguf")
    with pytest.raises(BadInputError, match="cannot be the base model"):
        MergeRequest(tmp_path / "out", config_text=linear_yaml(gguf_a, a)).plan()
