"""Round trips: GGUF → HF → GGUF, HF → GGUF → HF, GGUF → GGUF requantization."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import factories
from app.core.convert import ConvertRequest, plan_conversion
from app.core.jobs import RecordingReporter, run_job

CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def convert(source: Path, target: Path, out_type: str, **kwargs: object) -> RecordingReporter:
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(source, target, out_type, device="cpu", **kwargs), reporter)
    assert result.status == "done", result.error
    return reporter


def dequantized(path: Path) -> dict[str, np.ndarray]:
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type)
            for t in gguf.GGUFReader(path).tensors}


def test_smollm2_gguf_to_hf_to_gguf_same_tensors(smollm2_gguf: Path, smollm2_hf: Path,
                                                 tmp_path: Path) -> None:
    target = tmp_path / "smol-F16.gguf"
    convert(smollm2_hf, target, "F16")
    original = dequantized(smollm2_gguf)
    again = dequantized(target)
    assert set(original) == set(again)
    for name, values in original.items():
        # Q4_1 values are exact in float16 except where the F16 output rounds them, which
        # the HF F16 step did too: both sides rounded the same way give identical tensors.
        np.testing.assert_array_equal(values.astype(np.float16), again[name].astype(np.float16),
                                      err_msg=name)
    reader = gguf.GGUFReader(target)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert reader.fields["llama.rope.freq_base"].contents() == pytest.approx(100000.0)
    assert reader.fields["llama.attention.head_count_kv"].contents() == 3


def test_smollm2_hf_answers_paris(smollm2_hf: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert {"config.json", "generation_config.json", "tokenizer.json",
            "model.safetensors"} <= {p.name for p in smollm2_hf.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    prompt = tokenizer.apply_chat_template([{"role": "user",
                                             "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(CHATML)
    ids = tokenizer(CHATML, return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1]:])


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2_moe"])
def test_hf_to_gguf_to_hf_is_lossless_in_f32(family: str, tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    """Q/K permutation and expert stacking are undone exactly on the way back."""
    source = tiny_models.get(family) or factories.make_hf_model(tmp_path / family, family)
    convert(source, tmp_path / "m.gguf", "F32")
    back = tmp_path / "m-hf"
    convert(tmp_path / "m.gguf", back, "F32", to="hf")
    original = load_file(source / "model.safetensors")
    restored = load_file(back / "model.safetensors")
    original = {k.replace(".mlp.gate.", ".block_sparse_moe.gate."): v
                for k, v in original.items()}
    restored = {k.replace(".mlp.gate.", ".block_sparse_moe.gate."): v
                for k, v in restored.items()}
    assert set(original) == set(restored)
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name


def test_gguf_requantize_keeps_metadata(smollm2_gguf: Path, tmp_path: Path) -> None:
    target = tmp_path / "smol-Q8_0.gguf"
    plan = plan_conversion(smollm2_gguf, target, out_type="Q8_0")
    assert plan.copy_metadata_from == smollm2_gguf
    convert(smollm2_gguf, target, "Q8_0", keep_type="*attn_v*")
    source = gguf.GGUFReader(smollm2_gguf)
    written = gguf.GGUFReader(target)
    for key, value in source.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert key in written.fields, key
        assert written.fields[key].contents() == value.contents(), key
    assert written.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    before = {t.name: t for t in source.tensors}
    after = {t.name: t for t in written.tensors}
    assert list(before) == list(after)
    for index, (name, tensor) in enumerate(after.items()):
        old = before[name]
        if "attn_v" in name or old.tensor_type.name == "F32":
            assert tensor.tensor_type == old.tensor_type
            assert np.asarray(tensor.data).tobytes() == np.asarray(old.data).tobytes(), name
        else:
            assert tensor.tensor_type.name == "Q8_0", name
            if index % 8:
                continue  # values of every 8th tensor are enough; types and bytes of all
            a = gguf.quants.dequantize(old.data, old.tensor_type)
            b = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            assert np.abs(a - b).max() <= np.abs(a).max() / 100, name


def test_gguf_requantize_to_f16_then_back_is_exact(tiny_ggufs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    source = tiny_ggufs["moe-stacked"]
    convert(source, tmp_path / "f16.gguf", "F16")
    convert(tmp_path / "f16.gguf", tmp_path / "f32.gguf", "F32")
    original = dequantized(source)
    again = dequantized(tmp_path / "f32.gguf")
    halved = {t.name for t in gguf.GGUFReader(tmp_path / "f16.gguf").tensors
              if t.tensor_type.name == "F16"}
    assert "blk.0.ffn_gate_exps.weight" in halved
    assert "blk.0.ffn_gate_inp.weight" not in halved  # routers stay F32
    for name, values in original.items():
        expected = values.astype(np.float16).astype(np.float32) if name in halved else values
        np.testing.assert_array_equal(expected, again[name], err_msg=name)


def test_split_gguf_shards_are_joined(tmp_path: Path) -> None:
    shards = factories.make_split_gguf(tmp_path, "split", n_shards=3)
    target = tmp_path / "joined.gguf"
    reporter = convert(shards[0], target, "F16")
    reader = gguf.GGUFReader(target)
    assert not any(key.startswith("split.") for key in reader.fields)
    assert [t.name for t in reader.tensors] == [f"blk.{i}.part{p}.weight"
                                                for i in range(3) for p in range(2)]
    assert {t.tensor_type.name for t in reader.tensors} == {"F16"}
    assert any("3 split shards joined" in line for line in reporter.messages("info"))


def test_sentencepiece_gguf_to_hf_tokenizes_like_sentencepiece(tmp_path: Path) -> None:
    """A llama (SentencePiece) GGUF vocabulary becomes a tokenizer.json transformers loads
    and that splits text as the original SentencePiece model does."""
    import sentencepiece
    from transformers import AutoTokenizer

    source = factories.make_hf_model(tmp_path / "spm", "llama", with_tokenizer=False)
    model_file = factories.save_spm_tokenizer(source)
    convert(source, tmp_path / "spm.gguf", "F32")
    back = tmp_path / "back"
    reporter = convert(tmp_path / "spm.gguf", back, "F32", to="hf")
    assert any("SentencePiece" in message for message in reporter.messages())
    tokenizer = AutoTokenizer.from_pretrained(back)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    for text in ("Hello world 123", "The quick brown fox jumps over the lazy dog. 0123456789",
                 "  leading spaces and ünï 🦙", "tabs\tand\nnew lines"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == processor.encode(text), text
        assert tokenizer.decode(ids) == processor.decode(ids)
    assert tokenizer("Hi")["input_ids"][0] == processor.bos_id()  # BOS added, as llama does
