"""Quality comparison: the metrics themselves, and real models against their copies."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.core.errors import UnsupportedError
from app.core.generate.compare import CompareRequest, CompareResult, sample_text
from app.core.generate.compare_metrics import (
    kl_divergence,
    log_softmax,
    percent_floor,
    plan_windows,
    verdict,
)
from app.core.jobs import RecordingReporter, run_job

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed")


def compare(reference: Path, candidate: Path, **kwargs: object) -> CompareResult:
    result = run_job(CompareRequest(reference, candidate, **kwargs), RecordingReporter())
    assert result.status == "done", result.error
    return result.value


@pytest.mark.parametrize("n_tokens,window", [(2, 16), (10, 16), (17, 16), (100, 16),
                                             (1000, 256), (257, 256)])
def test_windows_score_every_target_once_with_context(n_tokens: int, window: int) -> None:
    windows = plan_windows(n_tokens, window)
    targets = [t for w in windows for t in w.targets]
    assert targets == list(range(1, n_tokens))
    for w in windows:
        assert w.end - w.start <= window
        assert w.rows.stop - w.rows.start == len(w.targets)
        if w.start > 0:
            assert w.first_target - 1 - w.start == window // 4  # re-read context


def test_kl_is_zero_for_identical_distributions_and_positive_otherwise() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 50))
    same = kl_divergence(log_softmax(logits), log_softmax(logits))
    assert np.all(same == 0)
    shifted = kl_divergence(log_softmax(logits), log_softmax(logits + rng.standard_normal((5,
                                                                                          50))))
    assert np.all(shifted > 0)
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    assert kl_divergence(p, q)[0] == pytest.approx(0.5 * np.log(0.5 / 0.9)
                                                   + 0.5 * np.log(0.5 / 0.1))


def test_verdict_words() -> None:
    assert verdict("Q4_K_M", 0.03, 0.9712) == ("Q4_K_M keeps 97.1 % top-1 agreement with the "
                                               "reference (mean KL 0.0300): close to the "
                                               "reference")
    assert percent_floor(0.9999) == "99.9" and percent_floor(1.0) == "100"
    assert "heavily degraded" in verdict("Q2_K", 0.5, 0.6)


def test_the_bundled_sample_is_a_few_hundred_words_of_austen() -> None:
    text = sample_text()
    assert text.startswith("It is a truth universally acknowledged")
    assert 250 < len(text.split()) < 500


def test_a_model_against_itself_has_no_divergence(tiny_models: dict[str, Path]) -> None:
    value = compare(tiny_models["llama"], tiny_models["llama"])
    # Two loads of one model usually give bit-identical logits, but CPU GEMM kernels may pick
    # another path for differently aligned buffers (seen: KL 4e-10 in about 1 run of 12).
    assert value.kl_mean < 1e-8 and value.kl_p99 < 1e-7 and value.top1_agreement == 1.0
    assert value.ppl_ref == pytest.approx(value.ppl_candidate, rel=1e-9)
    assert value.n_windows > 1  # the sample is longer than the tiny model's 256-token context
    assert len(value.per_token_kl) == value.n_tokens
    assert "100 % top-1" in value.verdict


def test_a_bf16_copy_diverges_more_than_the_model_itself(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from factories import make_hf_model

    bf16 = make_hf_model(tmp_path / "tiny-llama-bf16", "llama", dtype="bfloat16")
    value = compare(tiny_models["llama"], bf16, dtype="float32")
    assert value.kl_mean > 1e-9 and value.top1_agreement < 1.0
    assert value.kl_p99 >= value.kl_mean


def test_different_tokenizers_are_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_models["llama"], other)
    tokenizer = other / "tokenizer.json"
    # Drop the merges: the same vocabulary now splits text into single bytes.
    import json

    data = json.loads(tokenizer.read_text())
    data["model"]["merges"] = []
    tokenizer.write_text(json.dumps(data))
    result = run_job(CompareRequest(tiny_models["llama"], other, text="The capital of France"),
                     RecordingReporter())
    assert result.status == "failed" and result.exit_code == UnsupportedError.exit_code
    assert "tokenize the text differently from token 0" in result.error


@needs_llama_cpp
def test_hf_reference_against_its_f32_gguf_in_llama_cpp_agrees(
        tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path]) -> None:
    value = compare(tiny_models["llama"], tiny_llama_ggufs["F32"])
    assert value.ref_backend == "transformers" and value.candidate_backend == "llama.cpp"
    assert value.kl_mean < 1e-6 and value.top1_agreement == 1.0
    assert value.ppl_candidate == pytest.approx(value.ppl_ref, rel=1e-4)
    assert value.verdict.startswith("F32 keeps 100 % top-1 agreement")


@needs_llama_cpp
def test_q4_0_loses_more_than_q8_0_which_loses_more_than_f16(
        tiny_models: dict[str, Path], tiny_llama_ggufs: dict[str, Path]) -> None:
    kl = {}
    for qtype in ("F16", "Q8_0", "Q4_0"):
        value = compare(tiny_models["llama"], tiny_llama_ggufs[qtype])
        kl[qtype] = value.kl_mean
        print(f"{qtype}: kl_mean {value.kl_mean:.3e} kl_p99 {value.kl_p99:.3e} "
              f"top1 {value.top1_agreement:.4f} ppl {value.ppl_candidate:.3f}")
        if qtype == "F16":
            # KL ≈ 0; a random tiny model has near-tied logits, so F16 rounding may flip one
            # top-1 choice in a thousand (F32 agrees on every token, see above)
            assert value.kl_mean < 1e-6 and value.top1_agreement > 0.99
    assert kl["F16"] < kl["Q8_0"] < kl["Q4_0"]


@needs_llama_cpp
def test_smollm2_against_itself_in_llama_cpp(smollm2_gguf: Path) -> None:
    text = " ".join(sample_text().split()[:60])
    value = compare(smollm2_gguf, smollm2_gguf, text=text)
    assert value.kl_mean < 1e-6 and value.top1_agreement == 1.0
    assert 1 < value.ppl_ref < 100  # real English to a real model
    assert value.n_windows == 1
