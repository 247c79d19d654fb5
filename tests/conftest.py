"""Shared fixtures: the real SmolLM2 GGUF and tiny models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: tests never touch the user's cache or the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import factories  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return factories.smollm2_gguf()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llama, Mistral, Qwen2 and Mixtral checkpoints plus bitsandbytes 4- and 8-bit."""
    root = tmp_path_factory.mktemp("tiny-models")
    models = {family: factories.make_hf_model(root / f"tiny-{family}", family)
              for family in ("llama", "mistral", "qwen2", "mixtral")}
    models["llama-bnb4"] = factories.make_bnb_model(models["llama"], root / "tiny-llama-bnb4")
    models["llama-bnb8"] = factories.make_bnb_model(models["llama"], root / "tiny-llama-bnb8",
                                                    bits=8)
    return models


@pytest.fixture(scope="session")
def tiny_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-gguf")
    return {
        "dense": factories.make_gguf(root / "dense.gguf"),
        "moe-stacked": factories.make_gguf(root / "moe-stacked.gguf", n_experts=4),
        "moe-split": factories.make_gguf(root / "moe-split.gguf", n_experts=4,
                                         expert_layout="split"),
    }


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted GGUF (Q4_1) → HF safetensors (F16) by Modelyard, once per session."""
    from app.core.convert import ConvertRequest
    from app.core.jobs import RecordingReporter

    target = tmp_path_factory.mktemp("smollm2-hf") / "SmolLM2-135M-Instruct-hf"
    ConvertRequest(smollm2_gguf, target, "F16", to="hf", device="cpu").run(RecordingReporter())
    return target
