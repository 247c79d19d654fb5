"""`convert --target-size`: a type per weight, chosen on measured errors, under a file size."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from app.core.convert import ConvertRequest, plan_conversion
from app.core.convert.planner import plan_for_type
from app.core.errors import OptionError
from app.core.jobs import RecordingReporter, run_job
from app.core.quant import TARGETS, dequantize
from app.core.quant.imatrix_file import read_imatrix, write_imatrix
from app.core.quant.size_target import Candidate, choose_types, parse_size
from factories import make_gguf


def test_parse_size() -> None:
    assert parse_size("4.5GiB") == int(4.5 * 2**30)
    assert parse_size("900 MB") == 900 * 10**6
    assert parse_size("1024") == 1024
    with pytest.raises(OptionError, match="not a size"):
        parse_size("four gigs")


def test_choose_types_spends_the_budget_where_it_buys_most() -> None:
    a = [Candidate("Q4_0", 100, 10.0), Candidate("Q8_0", 200, 1.0)]
    b = [Candidate("Q4_0", 100, 2.0), Candidate("Q8_0", 200, 1.5)]
    chosen, _ = choose_types({"a": a, "b": b}, 300)
    assert (chosen["a"].type_name, chosen["b"].type_name) == ("Q8_0", "Q4_0")
    with pytest.raises(OptionError, match="larger size"):
        choose_types({"a": a, "b": b}, 150)


def _weighted_error(source: Path, output: Path, matrix: Path) -> float:
    weights = read_imatrix(matrix)
    originals = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(source).tensors}
    total = 0.0
    for tensor in gguf.GGUFReader(output).tensors:
        if tensor.name not in weights.entries:
            continue
        raw = torch.from_numpy(np.array(tensor.data)).view(torch.uint8)
        shape = [int(d) for d in reversed(tensor.shape)]
        values = dequantize(raw.reshape(-1), tensor.tensor_type.name, shape).numpy()
        diff = values - originals[tensor.name].reshape(values.shape)
        total += float((diff * diff * weights.weights(tensor.name)[0]).sum())
    return total


def test_fits_the_size_with_less_error_than_the_standard_mix_below(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "m.gguf", n_layers=1, n_embd=256, n_ff=256, n_vocab=256)
    rng = np.random.default_rng(1)
    sums, counts = {}, {}
    for tensor in gguf.GGUFReader(source).tensors:
        if len(tensor.shape) == 2:
            sums[tensor.name] = rng.lognormal(3, 2, (1, int(tensor.shape[0]))).astype(np.float32)
            counts[tensor.name] = [10]
    matrix = tmp_path / "m.imatrix.gguf"
    write_imatrix(matrix, sums, counts, datasets=["x"], chunk_count=1, chunk_size=10)
    base = plan_conversion(source, tmp_path / "x.gguf", out_type="Q8_0", imatrix=matrix)
    sizes = {name: plan_for_type(base, name).output_bytes for name, target in TARGETS.items()
             if target.default_type.is_quantized and target.writable}
    # Between the two largest standard mixes: the smaller one is the nearest below.
    below, above = sorted(sizes, key=sizes.__getitem__)[-2:]
    budget = (sizes[below] + sizes[above]) // 2

    reporter = RecordingReporter()
    result = run_job(ConvertRequest(source, tmp_path / "fit.gguf", "Q8_0", device="cpu",
                                    imatrix=matrix, target_size=budget), reporter)
    assert result.status == "done", result.error
    assert (tmp_path / "fit.gguf").stat().st_size <= budget
    assert any(m.startswith("size target") for m in reporter.messages("info"))
    standard = run_job(ConvertRequest(source, tmp_path / "std.gguf", below, device="cpu",
                                      imatrix=matrix), RecordingReporter())
    assert standard.status == "done", standard.error
    assert (_weighted_error(source, tmp_path / "fit.gguf", matrix)
            < _weighted_error(source, tmp_path / "std.gguf", matrix))


def test_a_size_below_the_smallest_file_is_refused_on_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = make_gguf(tmp_path / "m.gguf", n_layers=1, n_embd=64, n_ff=64)
    run = subprocess.run([sys.executable, "-m", "app", "convert", str(source), "-o",
                          str(tmp_path / "out.gguf"), "--type", "Q8_0", "--target-size", "4KiB"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "below the smallest Modelyard can write" in run.stderr
    assert not (tmp_path / "out.gguf").exists()


def test_fit_gpu_gives_a_model_that_the_estimate_puts_wholly_on_that_gpu(tmp_path: Path) -> None:
    from app.core.convert.size_target import gpu_weight_budget
    from app.core.estimate.verdict import MARGIN_BYTES, MARGIN_FRACTION, Machine, judge
    from app.core.formats.scan import inspect_path

    source = make_gguf(tmp_path / "m.gguf", n_layers=1, n_embd=256, n_ff=256, n_vocab=256)
    context = 64
    plan = plan_conversion(source, tmp_path / "x.gguf", out_type="Q8_0")
    probe = 64 * 2**30
    budget, on_gpu = gpu_weight_budget(plan, probe, context)
    reserved = int(probe * (1 - MARGIN_FRACTION)) - MARGIN_BYTES - budget
    gpu_bytes = sorted(sum(t.n_bytes for t in plan_for_type(plan, name).tensors if on_gpu(t))
                       for name, target in TARGETS.items()
                       if target.default_type.is_quantized and target.writable)
    # A GPU whose room for weights lies between the two largest standard mixes.
    room = (gpu_bytes[-2] + gpu_bytes[-1]) // 2
    vram = int((room + reserved + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1
    assert gpu_weight_budget(plan, vram, context)[0] >= room

    result = run_job(ConvertRequest(source, tmp_path / "fit.gguf", "Q8_0", device="cpu",
                                    fit_gpu_vram=vram, fit_gpu_context=context),
                     RecordingReporter())
    assert result.status == "done", result.error
    machine = Machine("test", ram_bytes=64 * 2**30, gpu_free=(vram,))
    assert judge(inspect_path(tmp_path / "fit.gguf"), machine, context).kind == "gpu"
    # It used the room above the smaller mix.
    on_gpu_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(tmp_path / "fit.gguf").tensors
                       if t.name.startswith(("blk.", "output")))
    assert gpu_bytes[-2] < on_gpu_bytes <= room
