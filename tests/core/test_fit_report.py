"""Candidates, recommendation and `modelyard fit` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import fit_report
from app.core.estimate.verdict import Machine
from app.core.formats.scan import inspect_path

JSON_KEYS = {"weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes",
             "total_ram_bytes", "total_vram_bytes", "verdict", "recommended_type"}


def test_hf_candidates_cover_every_target(tiny_models: dict[str, Path]) -> None:
    model = inspect_path(tiny_models["llama"])
    candidates = {c.quant: c for c in conversion_candidates(model)}
    assert {"F16", "Q8_0", "Q4_0", "Q4_K_M", "Q2_K"} <= set(candidates)
    f16 = candidates["F16"].model
    # every matrix at 2 bytes, norms at 4; the GGUF has the same parameters as the checkpoint
    assert sum(t.n_params for t in f16.tensors) == model.parameters
    assert candidates["Q8_0"].model.file_size < f16.file_size < candidates["F32"].model.file_size
    assert candidates["Q8_0"].writable
    # 64- and 128-wide rows cannot hold 256-element K blocks: llama.cpp falls back to legacy
    # types for every tensor, so even "Q4_K_M" is something Modelyard can write here
    q4_k_m = candidates["Q4_K_M"]
    assert not any(t.type.endswith("_K") for t in q4_k_m.model.tensors) and q4_k_m.writable
    assert candidates["F16"].model.metadata["llama.block_count"] == 2


def test_gguf_candidates_start_with_the_file_itself(smollm2_gguf: Path) -> None:
    candidates = conversion_candidates(inspect_path(smollm2_gguf))
    assert candidates[0].keep and candidates[0].quant == "Q4_1"
    conversions = {c.quant: c for c in candidates[1:]}
    assert "Q4_1" not in conversions and "Q4_0" in conversions
    assert conversions["Q8_0"].upward and conversions["Q4_0"].requantizes


def test_recommendation_is_the_best_writable_that_fits(tiny_models: dict[str, Path]) -> None:
    model = inspect_path(tiny_models["llama"])
    big = fit_report(model, Machine.custom(None, 64), conversions=conversion_candidates(model))
    # Q4_K_M is the default for a model that is not quantized, wherever it fits.
    assert big.recommended is not None and big.recommended.candidate.quant == "Q4_K_M"
    assert big.max_context == 256  # the tiny model's trained context
    report = fit_report(model, Machine.custom(None, 0.33), 256,
                        conversions=conversion_candidates(model))
    # 0.33 GiB leaves ~65 MiB: the llama.cpp runtime fits, transformers (torch) does not
    assert report.verdict.kind == "none"
    assert report.recommended is not None and report.recommended.candidate.writable


def run_fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "fit", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_fit_cli_json(tmp_path: Path, smollm2_gguf: Path) -> None:
    (tmp_path / smollm2_gguf.name).symlink_to(smollm2_gguf)
    result = run_fit(str(tmp_path / smollm2_gguf.name), "--ctx", "8192", "--vram", "24",
                     "--ram", "16", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert JSON_KEYS <= set(data)
    assert data["verdict"] == "gpu" and data["kv_cache_bytes"] == 180 * 1024**2
    assert data["total_vram_bytes"] > data["weights_bytes"] > 90 * 1024**2
    # it fits as it is: requantizing the Q4_1 would only stack a second error
    assert data["recommended_type"] == "Q4_1" and "keep" in data["recommended_label"]
    text = run_fit(str(tmp_path / smollm2_gguf.name), "--ram", "16", "--cpu-only")
    assert "fits in RAM only" in text.stdout and "KV cache" in text.stdout


def test_fit_cli_folder_of_quants(tmp_path: Path, tiny_ggufs: dict[str, Path]) -> None:
    for quant in ("F32", "Q8_0"):
        shutil.copy(tiny_ggufs["dense"], tmp_path / f"dense-{quant}.gguf")
    data = json.loads(run_fit(str(tmp_path), "--ram", "8", "--json").stdout)
    labels = [c["label"] for c in data["candidates"] if c["existing"]]
    # the file asked about is the first candidate, as it is; its sibling is listed by name
    assert labels == ["F32 (keep this file)", "dense-Q8_0"]


def test_fit_cli_rejects_nonsense(smollm2_gguf: Path) -> None:
    for args in (["--ctx", "-5"], ["--vram", "0"], ["--ram", "-1"], ["--gpu-layers", "-2",
                                                                     "--vram", "8"]):
        result = run_fit(str(smollm2_gguf), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
