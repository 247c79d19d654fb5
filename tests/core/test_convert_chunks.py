"""Tensors larger than one chunk, Q/K rows permuted chunk by chunk: the bytes must be those of
a whole-tensor conversion (gguf-py's quantizers on the numpy permutation llama.cpp's converter
applies), however the rows are cut."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core.convert import ConvertRequest, sizing
from app.core.jobs import RecordingReporter, run_job
from factories import make_gguf_from_hf


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


# hidden 64, 4 query heads of 16 rows, 2 KV heads of 32 rows: 1,024 elements a chunk cut q_proj
# into one head a chunk, 2,048 into two, 3,072 into three (a chunk that does not divide it).
@pytest.mark.parametrize("elements", [1024, 3072])
@pytest.mark.parametrize("out_type", ["F16", "Q8_0"])
def test_multi_chunk_conversion_equals_whole_tensor_conversion(
        tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        elements: int, out_type: str) -> None:
    monkeypatch.setattr(sizing, "CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(sizing, "BLOCK_CHUNK_ELEMENTS", elements)
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(tiny_models["llama"], tmp_path / "ours.gguf", out_type,
                                    device="cpu", pure=True), reporter)
    assert result.status == "done", result.error
    # every 64 x 64 q_proj, k_proj and 128 x 64 FFN matrix went through several chunks
    assert len(reporter.progress_calls) > 3 * 2 * 4
    ours = tensors_of(tmp_path / "ours.gguf")
    reference = tensors_of(make_gguf_from_hf(tiny_models["llama"], tmp_path / "ref.gguf",
                                             out_type))
    assert set(reference) <= set(ours)
    for name, (qtype, data) in reference.items():
        assert ours[name][0] == qtype, name
        assert ours[name][1] == data, f"{name}: bytes differ"
