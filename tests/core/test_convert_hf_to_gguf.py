"""HF safetensors → GGUF: names, types, shapes, metadata, and bytes identical to gguf-py's."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors import safe_open

import factories
from app.core.convert import ConvertRequest, plan_conversion
from app.core.convert.tensor_types import file_type_of
from app.core.jobs import RecordingReporter, run_job

LLAMA_BLOCK = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
               "ffn_gate", "ffn_up", "ffn_down")
# gguf-py quantizes these; for them Modelyard's bytes must be gguf-py's.
GGUF_PY_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


# The output types of the conversion issue; the K-quant mixes have tests of their own.
OUTPUT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def convert(source: Path, target: Path, out_type: str, **kwargs: object) -> RecordingReporter:
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(source, target, out_type, device="cpu", **kwargs), reporter)
    assert result.status == "done", result.error
    return reporter


def field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def llama_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, as the reference."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                out[name] = handle.get_tensor(name).float().numpy()
    return out


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factories.make_hf_model(tmp_path_factory.mktemp("bf16") / "tiny-llama-bf16", "llama",
                                   dtype="bfloat16", seed=3)


@pytest.mark.parametrize("out_type", OUTPUT_TYPES)
def test_every_output_type_reads_back(out_type: str, bf16_llama: Path, tmp_path: Path) -> None:
    target = tmp_path / f"tiny-{out_type}.gguf"
    convert(bf16_llama, target, out_type, pure=True)
    reader = gguf.GGUFReader(target)
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output.weight", "output_norm.weight"} | {
        f"blk.{b}.{n}.weight" for b in range(2) for n in LLAMA_BLOCK}
    assert set(tensors) == expected
    for name, tensor in tensors.items():
        want = "F32" if name.endswith("_norm.weight") else out_type
        assert tensor.tensor_type.name == want, name
    assert list(tensors["token_embd.weight"].shape) == [64, 320]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == int(file_type_of(out_type))
    assert field(reader, "general.quantization_version") == 2
    hyper = {"block_count": 2, "context_length": 256, "embedding_length": 64,
             "feed_forward_length": 128, "attention.head_count": 4,
             "attention.head_count_kv": 2, "vocab_size": 320, "rope.dimension_count": 16}
    for key, value in hyper.items():
        assert field(reader, f"llama.{key}") == value, key
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(field(reader, "tokenizer.ggml.tokens")) == 320
    assert len(field(reader, "tokenizer.ggml.merges")) > 0
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
    assert field(reader, "tokenizer.ggml.eos_token_id") == 2
    assert field(reader, "tokenizer.ggml.token_type")[1] == gguf.TokenType.CONTROL
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")


@pytest.mark.parametrize("out_type", GGUF_PY_TYPES)
def test_bytes_identical_to_gguf_py(out_type: str, bf16_llama: Path, tmp_path: Path) -> None:
    target = tmp_path / "tiny.gguf"
    convert(bf16_llama, target, out_type, pure=True)
    source = hf_tensors(bf16_llama)
    names = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight"}
    hf_block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for b in range(2):
        for hf, gg in hf_block.items():
            names[f"model.layers.{b}.{hf}.weight"] = f"blk.{b}.{gg}.weight"
    written = {t.name: t for t in gguf.GGUFReader(target).tensors}
    for hf_name, gguf_name in names.items():
        values = source[hf_name]
        if hf_name.endswith("q_proj.weight"):
            values = llama_permute(values, 4)
        elif hf_name.endswith("k_proj.weight"):
            values = llama_permute(values, 2)
        tensor = written[gguf_name]
        qtype = tensor.tensor_type
        assert qtype.name == ("F32" if gguf_name.endswith("_norm.weight") else out_type)
        reference = gguf.quants.quantize(values.astype(np.float32), qtype)
        assert np.asarray(tensor.data).tobytes() == reference.tobytes(), gguf_name


def test_mixtral_experts_are_stacked(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "mixtral.gguf"
    reporter = convert(tiny_models["mixtral"], target, "Q8_0")
    reader = gguf.GGUFReader(target)
    tensors = {t.name: t for t in reader.tensors}
    assert not any(".experts." in name for name in tensors)
    source = hf_tensors(tiny_models["mixtral"])
    for kind, w in (("gate", "w1"), ("down", "w2"), ("up", "w3")):
        stacked = tensors[f"blk.1.ffn_{kind}_exps.weight"]
        assert stacked.tensor_type.name == "Q8_0"
        rows, cols = source[f"model.layers.1.block_sparse_moe.experts.0.{w}.weight"].shape
        assert list(stacked.shape) == [cols, rows, 4]
        experts = np.stack([source[f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight"]
                            for e in range(4)])
        reference = gguf.quants.quantize(experts, gguf.GGMLQuantizationType.Q8_0)
        assert np.asarray(stacked.data).tobytes() == reference.tobytes()
    router = tensors["blk.0.ffn_gate_inp.weight"]
    assert router.tensor_type.name == "F32"
    assert field(reader, "llama.expert_count") == 4
    assert field(reader, "llama.expert_used_count") == 2
    assert any("4 experts stacked" in line for line in reporter.messages())


def test_qwen2_keeps_biases_and_order(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "qwen2.gguf"
    convert(tiny_models["qwen2"], target, "F16")
    reader = gguf.GGUFReader(target)
    assert field(reader, "general.architecture") == "qwen2"
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.attn_q.bias"].tensor_type.name == "F32"
    # qwen2 needs no Q/K permutation: the rows are as stored
    source = hf_tensors(tiny_models["qwen2"])
    q = np.asarray(tensors["blk.0.attn_q.weight"].data).astype(np.float32)
    np.testing.assert_array_equal(q, source["model.layers.0.self_attn.q_proj.weight"]
                                  .astype(np.float16).astype(np.float32))
    assert field(reader, "tokenizer.ggml.pre") == "qwen2"  # transformers' Qwen2Tokenizer regex


def test_sharded_bf16_with_tied_embeddings(tmp_path: Path) -> None:
    source = factories.make_hf_model(tmp_path / "tied", "llama", dtype="bfloat16",
                                     max_shard_size="60KB", tie_word_embeddings=True)
    assert (source / "model.safetensors.index.json").is_file()
    plan = plan_conversion(source, tmp_path / "tied.gguf", out_type="Q8_0")
    assert len({s.file for t in plan.tensors for s in t.slices}) > 1
    reporter = convert(source, tmp_path / "tied.gguf", "Q8_0")
    names = {t.name for t in gguf.GGUFReader(tmp_path / "tied.gguf").tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    assert any("tied" in line for line in reporter.messages("info"))


def test_row_that_does_not_divide_the_block_falls_back(tmp_path: Path) -> None:
    source = factories.make_hf_model(tmp_path / "odd", "llama", hidden_size=48,
                                     intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=12)
    reporter = convert(source, tmp_path / "odd.gguf", "Q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "odd.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == "F16"  # rows of 48 are no multiple of 32
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 64 are
    warnings = reporter.messages("warning")
    assert any("blk.0.attn_q.weight" in w and "row length 48" in w and "F16" in w
               for w in warnings)


def test_mistral_sliding_window_and_spm_tokenizer(tmp_path: Path) -> None:
    source = factories.make_hf_model(tmp_path / "mistral-spm", "mistral", with_tokenizer=False)
    factories.save_spm_tokenizer(source)
    convert(source, tmp_path / "m.gguf", "F16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "llama.attention.sliding_window") == 64
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert len(field(reader, "tokenizer.ggml.scores")) == 320
    assert field(reader, "tokenizer.ggml.bos_token_id") == 1
