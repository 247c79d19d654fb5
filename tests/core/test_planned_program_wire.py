"""A program planned in the window crosses to the job's process whole: an importance
matrix's weights included, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.convert import plan_conversion
from app.core.jobs_wire import WireError, decode, dumps, encode, loads

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"


def test_a_plan_with_an_importance_matrix_crosses_as_json(tmp_path: Path) -> None:
    plan = plan_conversion(DATA / "tiny-llama-2l-rows32-F32.gguf", tmp_path / "out.gguf",
                           out_type="Q4_K_M", imatrix=DATA / "imatrix.gguf")
    assert plan.importance is not None and plan.importance.covered
    back = decode(loads(dumps({"event": "x", "plan": encode(plan)}))["plan"])
    assert back == plan  # every tensor's program and type
    assert back.importance.covered == plan.importance.covered
    assert back.importance.uncovered == plan.importance.uncovered
    for name, weights in plan.importance.weights.items():
        got = back.importance.weights[name]
        assert got.dtype == weights.dtype and got.shape == weights.shape
        assert got.tobytes() == weights.tobytes()
    entry = next(iter(plan.importance.matrix.entries.values()))
    again = back.importance.matrix.entries[next(iter(plan.importance.matrix.entries))]
    assert np.array_equal(again.counts, entry.counts)


def test_an_object_array_is_not_rebuilt() -> None:
    data = encode(np.arange(3, dtype=np.int64))
    data["__ndarray__"] = "|O"
    with pytest.raises(WireError):
        decode(data)
    assert decode(encode(np.float32(2.5))) == 2.5  # a scalar stays a number


def test_the_fitted_program_comes_back_from_the_job_process(tmp_path: Path) -> None:
    from app.core.convert import ConvertRequest
    from app.core.convert.plan_fitted import FitToSizeRequest
    from app.core.jobs import RecordingReporter
    from app.core.jobs_process import run_in_child

    request = ConvertRequest(DATA / "tiny-llama-2l-rows32-F32.gguf", tmp_path / "out.gguf",
                             "Q8_0", device="cpu", imatrix=DATA / "imatrix.gguf")
    plan = request.plan()
    q4 = plan_conversion(request.source, request.target, out_type="Q4_K_M",
                         imatrix=request.imatrix)
    budget = (plan.output_bytes + q4.output_bytes) // 2
    result = run_in_child(FitToSizeRequest(
        ConvertRequest(request.source, request.target, "Q8_0", device="cpu",
                       imatrix=request.imatrix, target_size=budget), plan),
        RecordingReporter())
    assert result.status == "done", result.error
    fitted = result.value
    assert fitted.output_bytes <= budget < plan.output_bytes
    assert fitted.notes[-1].startswith("size target")
    assert fitted.importance is not None and fitted.importance.covered == plan.importance.covered
    assert not (tmp_path / "out.gguf").exists()


def test_the_window_knows_which_types_a_matrix_weights() -> None:
    from app.core.convert.importance import WEIGHTED_TYPES, importance_applies
    from app.core.quant.weighted import WEIGHTED_QUANTIZERS

    assert frozenset(WEIGHTED_QUANTIZERS) == WEIGHTED_TYPES
    assert importance_applies("Q4_K_M") and importance_applies("q4_0")
    assert not importance_applies("Q8_0") and not importance_applies("F16")
