"""Hugging Face folders: plain, sharded, bitsandbytes, GPTQ, pickle, and broken ones."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.core.formats.scan import inspect_path
from factories import make_hf_model


@pytest.mark.parametrize("family,arch", [("llama", "llama"), ("mistral", "mistral"),
                                         ("qwen2", "qwen2"), ("mixtral", "mixtral")])
def test_tiny_models_are_described(tiny_models: dict[str, Path], family: str, arch: str) -> None:
    model = inspect_path(tiny_models[family])
    assert model.format == "hf"
    assert model.architecture == arch
    assert model.n_layers == 2
    assert model.context_length == 256
    assert model.has_tokenizer
    assert model.quantization == "F32"
    assert model.problems == ()
    assert model.tensor_types == {"F32": model.n_tensors}
    state_params = sum(t.n_params for t in model.tensors)
    assert model.parameters == state_params > 0
    if family == "mixtral":
        assert model.moe is not None
        assert (model.moe.n_experts, model.moe.n_experts_used, model.moe.layout) == (4, 2,
                                                                                     "split")
    else:
        assert model.moe is None


def test_parameter_count_matches_torch(tiny_models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    expected = sum(p.numel() for p in loaded.parameters())
    assert inspect_path(tiny_models["llama"]).parameters == expected


def test_bnb_4bit_checkpoint(tiny_models: dict[str, Path]) -> None:
    plain = inspect_path(tiny_models["llama"])
    model = inspect_path(tiny_models["llama-bnb4"])
    assert model.quantization == "bnb-nf4"
    # 7 linear layers per block x 2 blocks are packed NF4; their real shapes come back
    assert model.tensor_types["NF4"] == 14
    q_proj = next(t for t in model.tensors if t.name == "model.layers.0.self_attn.q_proj.weight")
    assert q_proj.shape == (64, 64) and q_proj.n_bytes == 64 * 64 // 2
    assert model.parameters == plain.parameters
    assert model.file_size < plain.file_size


def test_bnb_8bit_checkpoint(tiny_models: dict[str, Path]) -> None:
    model = inspect_path(tiny_models["llama-bnb8"])
    assert model.quantization == "bnb-int8"
    assert model.tensor_types["INT8"] == 14
    assert model.parameters == inspect_path(tiny_models["llama"]).parameters


def test_sharded_checkpoint_and_missing_shard(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path / "sharded", "llama", max_shard_size="100KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    model = inspect_path(folder)
    assert len(model.files) == len(shards) and not model.problems
    (folder / shards[-1]).unlink()
    broken = inspect_path(folder)
    assert any(shards[-1] in p.text and "missing" in p.text for p in broken.fatal_problems)


def test_gptq_checkpoint_is_labelled(tmp_path: Path) -> None:
    folder = tmp_path / "gptq"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 1,
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}}))
    save_file({
        "model.layers.0.mlp.up_proj.qweight": torch.zeros(512 // 8, 1024, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.qzeros": torch.zeros(4, 1024 // 8, dtype=torch.int32),
        "model.layers.0.mlp.up_proj.scales": torch.zeros(4, 1024, dtype=torch.float16),
        "model.layers.0.mlp.up_proj.g_idx": torch.zeros(512, dtype=torch.int32),
    }, folder / "model.safetensors")
    model = inspect_path(folder)
    assert model.quantization == "gptq-4bit"
    assert model.parameters == 512 * 1024
    assert model.tensor_types["GPTQ-4bit"] == 1


def test_pickle_weights_are_listed_but_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "old-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 12}))
    # A pickle that would run code if anyone unpickled it.
    payload = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    (folder / "pytorch_model.bin").write_bytes(payload)
    model = inspect_path(folder)
    assert model.format == "pickle"
    assert model.n_layers == 12
    assert any("pickle" in p.text and "arbitrary code" in p.text for p in model.problems)
    assert not (tmp_path / "pwned").exists()


def test_header_length_past_end(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    model = inspect_path(folder)
    assert "points past the end of the file" in model.fatal_problems[0].text


def test_truncated_safetensors_names_the_tensor(tmp_path: Path,
                                                tiny_models: dict[str, Path]) -> None:
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_models["llama"] / name).read_bytes())
    data = (tiny_models["llama"] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    problem = inspect_path(folder).fatal_problems[0].text
    assert "truncated" in problem and "tensor 'model." in problem


def test_broken_config_and_garbage_header(tmp_path: Path) -> None:
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"\xff\xfe{[x")
    problems = [p.text for p in inspect_path(folder).fatal_problems]
    assert any("config.json not valid JSON" in p for p in problems)
    assert any("model.safetensors: header is not valid JSON" in p for p in problems)
