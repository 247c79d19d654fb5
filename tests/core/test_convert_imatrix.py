"""`convert --imatrix`: llama-quantize --imatrix's output, tensor for tensor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from ggml_reference import ggml_quantize

from app.core.convert import ConvertRequest, plan_conversion
from app.core.errors import OptionError, UnsupportedError
from app.core.jobs import RecordingReporter, run_job
from app.core.quant import get_target
from app.core.quant.imatrix_file import write_imatrix
from factories import make_gguf

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"
SOURCE = DATA / "tiny-llama-2l-rows32-F32.gguf"


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def convert(source: Path, target: Path, out_type: str, imatrix: Path,
            pure: bool = False) -> RecordingReporter:
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(source, target, out_type, device="cpu", pure=pure,
                                    imatrix=imatrix), reporter)
    assert result.status == "done", result.error
    return reporter


@pytest.mark.parametrize("mix", ["Q6_K", "Q4_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M"])
def test_requantization_equals_llama_quantize_imatrix(tmp_path: Path, mix: str) -> None:
    # token_embd, which the matrix does not cover, needs the unweighted quantizers too.
    assert get_target(mix).writable, mix
    reporter = convert(SOURCE, tmp_path / "out.gguf", mix, DATA / "imatrix.gguf")
    assert tensors_of(tmp_path / "out.gguf") == tensors_of(DATA / f"imatrix-{mix}-rows32.gguf")
    # token_embd has no entry: quantized without the matrix, and the log says so.
    assert ("token_embd.weight: not in the importance matrix, quantized without it"
            in reporter.messages("info"))
    fields = gguf.GGUFReader(tmp_path / "out.gguf").fields
    written = {k: fields[k].contents() for k in fields if k.startswith("quantize.imatrix.")}
    assert written == {"quantize.imatrix.file": str(DATA / "imatrix.gguf"),
                       "quantize.imatrix.dataset": "synthetic-reference",
                       "quantize.imatrix.entries_count": 6,
                       "quantize.imatrix.chunks_count": 10}


def test_matrix_for_another_model_is_refused_on_the_cli(tmp_path: Path) -> None:
    other = make_gguf(tmp_path / "other.gguf", n_layers=2, n_embd=64)
    target = tmp_path / "out.gguf"
    run = subprocess.run([sys.executable, "-m", "app", "convert", str(other), "-o", str(target),
                          "--type", "Q4_0", "--imatrix", str(DATA / "imatrix.gguf")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "another model" in run.stderr and "blk.0.attn_k.weight" in run.stderr
    assert not target.exists() and not Path(str(target) + ".part").exists()


def test_a_matrix_with_a_float_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="quantized GGUF"):
        plan_conversion(SOURCE, tmp_path / "out.gguf", out_type="F16",
                        imatrix=DATA / "imatrix.gguf")


def _matrix_for(path: Path, target: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A matrix covering every 2-D+ weight of `path` except token_embd; [n_mat, ne0] each."""
    sums, counts = {}, {}
    for tensor in gguf.GGUFReader(path).tensors:
        shape = [int(d) for d in tensor.shape]
        if len(shape) < 2 or tensor.name == "token_embd.weight":
            continue
        n_mat = shape[2] if len(shape) == 3 else 1
        sums[tensor.name] = rng.lognormal(3, 2, (n_mat, shape[0])).astype(np.float32)
        counts[tensor.name] = rng.integers(1, 50, n_mat)
    stacked = [name for name in sums if "exps" in name]
    if stacked:  # an expert the calibration never routed to: llama.cpp weighs it 1
        counts[stacked[0]] = np.array([3, 0, 5, 7])
    write_imatrix(target, sums, counts, datasets=["calib.txt"], chunk_count=2, chunk_size=16)
    return {name: np.where(counts[name][:, None] > 0,
                           sums[name] / np.maximum(counts[name], 1)[:, None].astype(np.float32),
                           1).astype(np.float32) for name in sums}


def test_stacked_experts_are_weighted_per_expert(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "moe.gguf", n_layers=2, n_embd=64, n_ff=64, n_experts=4)
    weights = _matrix_for(source, tmp_path / "moe.imatrix.gguf", np.random.default_rng(3))
    convert(source, tmp_path / "out.gguf", "Q4_0", tmp_path / "moe.imatrix.gguf", pure=True)
    ours = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(tmp_path / "out.gguf").tensors}
    sources = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(source).tensors}
    for name in ("blk.0.ffn_down_exps.weight", "blk.0.ffn_gate_exps.weight",
                 "blk.1.ffn_up_exps.weight"):
        for expert in range(4):
            expected = ggml_quantize(sources[name][expert], "Q4_0", weights[name][expert])
            assert np.array_equal(ours[name][expert].reshape(expected.shape), expected), (
                name, expert)


def test_q4_0_gives_the_first_ffn_down_layers_q4_1_with_a_matrix(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "deep.gguf", n_layers=16, n_embd=64, n_ff=64)
    _matrix_for(source, tmp_path / "deep.imatrix.gguf", np.random.default_rng(5))
    plan = plan_conversion(source, tmp_path / "out.gguf", out_type="Q4_0",
                           imatrix=tmp_path / "deep.imatrix.gguf")
    types = {t.name: t.out_type for t in plan.tensors}
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q4_1", "Q4_1", "Q4_0",
                                                                     "Q4_0"]
    assert types["blk.0.ffn_up.weight"] == "Q4_0"
    without = plan_conversion(source, tmp_path / "out.gguf", out_type="Q4_0")
    assert {t.out_type for t in without.tensors if "ffn_down" in t.name} == {"Q4_0"}


def test_a_size_mismatch_names_the_tensor(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "m.gguf", n_layers=1, n_embd=64, n_ff=64)
    write_imatrix(tmp_path / "bad.gguf", {"blk.0.ffn_down.weight": np.ones((1, 32), np.float32)},
                  {"blk.0.ffn_down.weight": [1]}, datasets=[], chunk_count=1, chunk_size=1)
    with pytest.raises(UnsupportedError, match="blk.0.ffn_down.weight: 32 values for 64"):
        plan_conversion(source, tmp_path / "out.gguf", out_type="Q4_0",
                        imatrix=tmp_path / "bad.gguf")
