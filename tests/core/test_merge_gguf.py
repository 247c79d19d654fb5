"""GGUF inputs: dequantized tensor by tensor, named and ordered as the HF base model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import factories
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


@pytest.mark.parametrize(("family", "out_type"),
                         [("llama", "F32"), ("llama", "F16"), ("mixtral", "F32")])
def test_a_gguf_base_merges_like_its_hf_source(family: str, out_type: str,
                                               tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.core.convert import ConvertRequest

    a = factories.make_hf_model(tmp_path / "a", family, seed=1)
    b = factories.make_hf_model(tmp_path / "b", family, seed=2, with_tokenizer=False)
    gguf_a = tmp_path / "a.gguf"
    # Llama's Q/K rows permuted for llama.cpp, Mixtral's experts stacked.
    ConvertRequest(a, gguf_a, out_type, device="cpu", pure=True).run(RecordingReporter())

    # TIES's top-k is exact only on exact inputs: F16's rounding may move its threshold.
    method = "ties" if out_type == "F32" else "task_arithmetic"

    def config(base: Path) -> str:
        return (f"merge_method: {method}\nbase_model: {base}\ndtype: float32\nmodels:\n"
                f"  - model: {base}\n  - model: {b}\n"
                "    parameters: {weight: 0.6, density: 0.5}\n")

    MergeRequest(tmp_path / "hf", config_text=config(a)).run(RecordingReporter())
    MergeRequest(tmp_path / "gguf", config_text=config(gguf_a)).run(RecordingReporter())
    # Compared as transformers holds them: a Mixtral base's experts are written per expert.
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf")
    from_gguf = model.state_dict()
    assert from_gguf.keys() == reference.keys()
    for name, value in reference.items():
        # F16 keeps 11 significant bits of the base's weights.
        tolerance = 0.0 if out_type == "F32" else 2e-3 * float(value.abs().max())
        assert float((from_gguf[name] - value).abs().max()) <= tolerance, name

    config_json = json.loads((tmp_path / "gguf" / "config.json").read_text())
    assert config_json["model_type"] == family
    text = "Hello world, merged"
    ids = AutoTokenizer.from_pretrained(tmp_path / "gguf")(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == AutoTokenizer.from_pretrained(a)(text).input_ids
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3


def test_a_gguf_tokenizer_source(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    a = factories.make_hf_model(tmp_path / "a", "llama", seed=1, with_tokenizer=False)
    b = factories.make_hf_model(tmp_path / "b", "llama", seed=2)
    gguf_b = factories.make_gguf_from_hf(b, tmp_path / "b-q8.gguf", "Q8_0")
    config = linear_yaml(a, gguf_b) + f"tokenizer_source: {gguf_b}\n"
    merged(tmp_path / "out", config)
    text = "Hello world, merged"
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(text).input_ids == \
        AutoTokenizer.from_pretrained(b)(text).input_ids
