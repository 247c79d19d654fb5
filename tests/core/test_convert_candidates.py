"""Fit candidates for HF models come from the converter's own tensor program: each candidate's
tensors, types and sizes are exactly what the conversion writes (Qwen2-MoE's shared expert
included), and a bitsandbytes checkpoint is judged at its dequantized size."""

from __future__ import annotations

from pathlib import Path

import pytest

import factories
from app.core.convert import ConvertRequest
from app.core.estimate.candidates import conversion_candidates
from app.core.formats.scan import inspect_path
from app.core.jobs import RecordingReporter


@pytest.fixture(scope="module")
def qwen2_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return factories.make_hf_model(tmp_path_factory.mktemp("qwen2moe") / "tiny-qwen2moe",
                                   "qwen2_moe")


def _written(path: Path) -> dict[str, tuple[str, int]]:
    import gguf

    return {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2_moe"])
def test_candidates_equal_what_the_converter_writes(family: str, tiny_models: dict[str, Path],
                                                    qwen2_moe: Path, tmp_path: Path) -> None:
    source = qwen2_moe if family == "qwen2_moe" else tiny_models[family]
    candidates = {c.quant: c for c in conversion_candidates(inspect_path(source))}
    for quant in ("F16", "Q8_0", "Q4_0"):
        target = tmp_path / f"{family}-{quant}.gguf"
        ConvertRequest(source, target, quant, device="cpu").run(RecordingReporter())
        planned = {t.name: (t.type, t.n_bytes) for t in candidates[quant].model.tensors}
        assert planned == _written(target), quant
        assert candidates[quant].model.file_size == sum(n for _, n in planned.values())
    if family == "qwen2_moe":
        assert any("shexp" in name for name in planned)


def test_a_bnb_checkpoint_is_judged_at_its_dequantized_size(tiny_models: dict[str, Path]) -> None:
    plain = {c.quant: c.model for c in conversion_candidates(inspect_path(tiny_models["llama"]))}
    for variant in ("llama-bnb4", "llama-bnb8"):
        packed = inspect_path(tiny_models[variant])
        candidates = {c.quant: c.model for c in conversion_candidates(packed)}
        for quant in ("F16", "Q8_0"):
            assert candidates[quant].file_size == plain[quant].file_size
        # the packed [4096, 1] uint8 (or int8) weight counts as its 64×128 F16 matrix
        ffn_up = next(t for t in candidates["F16"].tensors if t.name == "blk.0.ffn_up.weight")
        assert ffn_up.n_bytes == 64 * 128 * 2
