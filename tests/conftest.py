"""Shared fixtures: the real SmolLM2 GGUF and tiny models built once per test session."""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: tests never touch the user's cache or the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import factories  # noqa: E402
from reference_models import ReferenceFiles, f32_tensors  # noqa: E402

# A test stuck in C code holding the GIL (a native deadlock) never lets pytest-timeout's handler
# run. faulthandler's watchdog is a C thread: it prints every thread's stack and ends the run,
# so CI fails in minutes with the evidence instead of at its 90-minute limit.
HANG_SECONDS = 300
_real_stderr_fd: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Capture is suspended while plugins configure; during a test fd 2 is pytest's capture file.
    global _real_stderr_fd
    _real_stderr_fd = os.dup(2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if _real_stderr_fd is not None:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=_real_stderr_fd)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Interpreter shutdown (thread joins, Qt teardown) gets the same guard; it is never cancelled
    # and dies with the process when the exit is clean.
    if _real_stderr_fd is not None:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=_real_stderr_fd)


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
def reference_files(tmp_path_factory: pytest.TempPathFactory) -> ReferenceFiles:
    """Generated real-valued F32 models and llama.cpp's own quantizations of them, made on
    first use (see reference_models.py)."""
    return ReferenceFiles(tmp_path_factory.mktemp("kquants-reference"))


@pytest.fixture(scope="session")
def kquants_reference(reference_files: ReferenceFiles) -> Path:
    """A folder holding tiny-llama-F32.gguf and what llama.cpp's quantizer wrote from it: every
    pure type (tiny-llama-pure-TYPE.gguf) and every mix (tiny-llama-MIX.gguf)."""
    return reference_files.standard_folder("tiny-llama")


@pytest.fixture(scope="session")
def tiny_reference_f32(kquants_reference: Path) -> dict:
    """The F32 tensors of the reference tiny llama, by GGUF name (numpy, row-major)."""
    return f32_tensors(kquants_reference / "tiny-llama-F32.gguf")


@pytest.fixture(scope="session")
def tiny_llama_ggufs(tiny_models: dict[str, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny HF llama converted by Modelyard to GGUF F32, F16, Q8_0 and Q4_0 (every weight
    in that type, so comparisons measure the type itself)."""
    from app.core.convert import ConvertRequest
    from app.core.jobs import RecordingReporter

    root = tmp_path_factory.mktemp("tiny-llama-gguf")
    paths = {}
    for qtype in ("F32", "F16", "Q8_0", "Q4_0"):
        paths[qtype] = root / f"tiny-{qtype}.gguf"
        ConvertRequest(tiny_models["llama"], paths[qtype], qtype, device="cpu",
                       pure=True).run(RecordingReporter())
    return paths


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted GGUF (Q4_1) → HF safetensors (F16) by Modelyard, once per session."""
    from app.core.convert import ConvertRequest
    from app.core.jobs import RecordingReporter

    target = tmp_path_factory.mktemp("smollm2-hf") / "SmolLM2-135M-Instruct-hf"
    ConvertRequest(smollm2_gguf, target, "F16", to="hf", device="cpu").run(RecordingReporter())
    return target


@pytest.fixture()
def single_threaded_torch() -> Iterator[None]:
    """torch on one thread: the quantizer tests compare in-order float32 sums with ggml's."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
