"""llama.cpp itself loads what Modelyard writes: same greedy tokens as transformers on the
source model, same tokenization as the HF tokenizer. Runs where llama-cpp-python is installed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import factories
from app.core.convert import ConvertRequest
from app.core.generate.backends.llama_cpp import open_llama
from app.core.jobs import RecordingReporter

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (extra 'llama') is absent")

TEXT = ("The capital of France is Paris. 123 4567 hello   world\n\nIt's  you're "
        "<|im_start|>user\nünïcödé 🦙 tabs\tand 3.14")


def to_gguf(source: Path, target: Path, out_type: str = "F16") -> Path:
    ConvertRequest(source, target, out_type, device="cpu").run(RecordingReporter())
    return target


def load(path: Path, vocab_only: bool = False) -> object:
    return open_llama(path, n_ctx=256, vocab_only=vocab_only, n_threads=2)


def greedy_llama_cpp(llm: object, prompt: list[int], n: int) -> list[int]:
    tokens: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):  # type: ignore[attr-defined]
        tokens.append(token)
        if len(tokens) == n:
            break
    return tokens


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2_moe"])
def test_greedy_tokens_match_transformers(family: str, tiny_models: dict[str, Path],
                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_models.get(family) or factories.make_hf_model(tmp_path / family, family)
    llm = load(to_gguf(source, tmp_path / f"{family}.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    prompt = tokenizer("The capital of France")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    expected = out[0][len(prompt):].tolist()
    assert greedy_llama_cpp(llm, prompt, 8) == expected


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokenization_matches_hf(family: str, tiny_models: dict[str, Path],
                                 tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    source = tiny_models[family]
    llm = load(to_gguf(source, tmp_path / "t.gguf"), vocab_only=True)
    expected = AutoTokenizer.from_pretrained(source)(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == expected


def test_smollm2_tokenizer_survives_both_directions(smollm2_gguf: Path, smollm2_hf: Path,
                                                     tmp_path: Path) -> None:
    """GGUF → HF gives a tokenizer.json that splits like llama.cpp's 'smollm'; HF → GGUF
    recognises it as 'smollm' again; all three tokenize alike."""
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(smollm2_hf)(TEXT)["input_ids"]
    original = load(smollm2_gguf, vocab_only=True)
    assert original.tokenize(TEXT.encode(), add_bos=False, special=True) == expected
    again = load(to_gguf(smollm2_hf, tmp_path / "smol.gguf"), vocab_only=True)
    assert again.tokenize(TEXT.encode(), add_bos=False, special=True) == expected


def test_sentencepiece_tokenizer_matches(tmp_path: Path) -> None:
    import sentencepiece

    source = factories.make_hf_model(tmp_path / "spm", "llama", with_tokenizer=False)
    model = factories.save_spm_tokenizer(source)
    llm = load(to_gguf(source, tmp_path / "spm.gguf"), vocab_only=True)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model))
    for text in ("Hello world 123", "The quick brown fox jumps over the lazy dog. 0123456789",
                 "  leading spaces and ünï", "tabs\tand\nnew lines"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == \
            processor.encode(text)
