"""compare's numbers against an independent computation: perplexity and KL from the two
models' logits computed directly in torch, the 99th percentile by a hand-written quantile, and
the reference computed in float32 by default."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app.core.generate.compare import CompareRequest, CompareResult, sample_text
from app.core.generate.compare_metrics import DTYPE_NOISE_FLOOR
from app.core.jobs import RecordingReporter, run_job
from factories import make_hf_model


def direct_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the two nearest ranks (numpy's default definition)."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def logprobs(folder: Path, ids: list[int]):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)


def test_perplexity_kl_and_p99_match_a_direct_computation(tiny_models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    import torch
    from tokenizers import Tokenizer

    reference = tiny_models["llama"]
    candidate = make_hf_model(tmp_path / "other", "llama", seed=1)
    text = " ".join(sample_text().split()[:25])
    reporter = RecordingReporter()
    result = run_job(CompareRequest(reference, candidate, text=text), reporter)
    assert result.status == "done", result.error
    value: CompareResult = result.value
    assert value.n_windows == 1 and value.reference_dtype == "float32"
    assert value.noise_floor == DTYPE_NOISE_FLOOR["float32"]
    assert "reference: tiny-llama with transformers in float32" in " ".join(reporter.messages())

    ids = Tokenizer.from_file(str(reference / "tokenizer.json")).encode(text).ids
    if value.n_tokens == len(ids):  # the model's tokenizer starts texts with BOS
        ids = [1, *ids]
    assert value.n_tokens == len(ids) - 1
    ref, cand = logprobs(reference, ids), logprobs(candidate, ids)
    targets = torch.tensor(ids[1:])[:, None]
    ppl_ref = math.exp(-ref[:-1].gather(1, targets).mean().item())
    ppl_cand = math.exp(-cand[:-1].gather(1, targets).mean().item())
    kl = (ref.exp() * (ref - cand)).sum(dim=-1)[:-1].tolist()
    top1 = (ref[:-1].argmax(-1) == cand[:-1].argmax(-1)).double().mean().item()

    assert value.ppl_ref == pytest.approx(ppl_ref, rel=1e-5)
    assert value.ppl_candidate == pytest.approx(ppl_cand, rel=1e-5)
    assert value.kl_mean == pytest.approx(sum(kl) / len(kl), rel=1e-4)
    assert value.kl_p99 == pytest.approx(direct_quantile(kl, 0.99), rel=1e-4)
    assert value.per_token_kl == pytest.approx(kl, rel=1e-3, abs=1e-9)
    assert value.top1_agreement == pytest.approx(top1)
    assert value.kl_mean > value.noise_floor  # two different models are told apart


def test_a_reference_that_does_not_fit_in_float32_runs_in_bfloat16(
        tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from app.core.estimate.transformers_load import estimate_hf_load
    from app.core.formats.scan import inspect_path

    needed = estimate_hf_load(inspect_path(tiny_models["llama"]), 256, dtype="float32").ram.total
    available = type("Memory", (), {"available": needed})()  # under the margin: no room
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    reporter = RecordingReporter()
    result = run_job(CompareRequest(tiny_models["llama"], tiny_models["llama"], text="The cat",
                                    use_gpu=False), reporter)
    assert result.status == "done", result.error
    assert result.value.reference_dtype == "bfloat16"
    assert result.value.noise_floor == DTYPE_NOISE_FLOOR["bfloat16"]
    assert any("runs in bfloat16" in n for n in result.value.notes)
