"""The real SmolLM2-135M-Instruct Q4_1 answers "Paris" through every backend available.

llama.cpp tests need llama-cpp-python (the `llama` extra); the transformers GGUF path loads
the model once for the module (about half a minute on 2 cores).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from app.core.formats.scan import inspect_path
from app.core.generate.backends.base import LoadOptions
from app.core.generate.chat import chat_messages
from app.core.generate.loader import BackendChoice, open_model
from app.core.generate.request import GenerateRequest, generate_tokens
from app.core.generate.sampling import Sampler
from app.core.jobs import NullReporter, RecordingReporter, run_job
from factories import CancellingReporter

QUESTION = "What is the capital of France?"
CHATML = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
PARIS_IDS = (504, 3575, 282, 4649, 314, 7042, 30)  # "The capital of France is Paris."
# SmolLM2's template injects its own long system prompt when none is given, and with it
# this 135M Q4_1 model answers in garbled French; a short system message keeps it on track.
SYSTEM = "You are a helpful assistant."

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed")


@needs_llama_cpp
def test_llama_cpp_gives_the_exact_tokens_for_the_chatml_prompt(smollm2_gguf: Path) -> None:
    reporter = RecordingReporter()
    result = run_job(GenerateRequest(smollm2_gguf, CHATML, use_chat_template=False,
                                     max_tokens=32), reporter)
    assert result.status == "done", result.error
    value = result.value
    assert value.token_ids == PARIS_IDS
    assert value.text == "The capital of France is Paris."
    assert value.stop_reason == "eos"
    assert value.backend == "llama.cpp" and value.prompt_format == "raw"
    assert value.n_prompt_tokens == 16
    assert value.tokens_per_s > 0 and value.prompt_tokens_per_s > 0
    assert any(m.startswith("backend: llama.cpp") for m in reporter.messages())


@needs_llama_cpp
def test_llama_cpp_applies_the_models_chat_template(smollm2_gguf: Path) -> None:
    pieces: list[str] = []
    result = run_job(GenerateRequest(smollm2_gguf, QUESTION, system=SYSTEM, max_tokens=32,
                                     on_text=pieces.append), NullReporter())
    assert result.status == "done", result.error
    assert result.value.prompt_format == "chat template"
    assert "Paris" in result.value.text
    assert "".join(pieces) == result.value.text and len(pieces) == len(PARIS_IDS)


@needs_llama_cpp
def test_chat_template_without_system_uses_the_models_default(smollm2_gguf: Path) -> None:
    info = inspect_path(smollm2_gguf)
    model = open_model(info, BackendChoice("llama.cpp", "test"), LoadOptions(use_gpu=False))
    try:
        ids = model.encode_chat(chat_messages(QUESTION))
        text = model.llm.detokenize(ids, special=True).decode()
    finally:
        model.close()
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith(CHATML)


@needs_llama_cpp
def test_llama_cpp_cancel_stops_within_one_token(smollm2_gguf: Path) -> None:
    reporter = CancellingReporter(after=2)
    result = run_job(GenerateRequest(smollm2_gguf, "Tell me a long story.", max_tokens=64),
                     reporter)
    assert result.status == "cancelled"
    assert reporter.tokens_seen[-1] == 2


@pytest.fixture(scope="module")
def smollm2_in_transformers(smollm2_gguf: Path):
    info = inspect_path(smollm2_gguf)
    model = open_model(info, BackendChoice("transformers", "test"), LoadOptions(use_gpu=False))
    yield model
    model.close()


def test_transformers_gguf_loading_gives_the_same_answer(smollm2_in_transformers) -> None:
    model = smollm2_in_transformers
    assert model.backend == "transformers (GGUF)" and model.device == "cpu"
    ids = model.encode_raw_prompt(CHATML)
    assert len(ids) == 16
    output = generate_tokens(model, ids, Sampler(), 32, NullReporter())
    assert tuple(output.token_ids) == PARIS_IDS
    assert output.text == "The capital of France is Paris."
    assert output.stop_reason == "eos"


def test_transformers_gguf_applies_the_chat_template(smollm2_in_transformers) -> None:
    model = smollm2_in_transformers
    ids = model.encode_chat(chat_messages(QUESTION, SYSTEM))
    output = generate_tokens(model, ids, Sampler(), 32, NullReporter())
    assert "Paris" in output.text
