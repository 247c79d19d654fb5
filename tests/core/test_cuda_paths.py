"""CUDA code paths, run without a GPU: an out-of-memory error becomes a resource error with the
numbers and what to try, `cuda:N` is accepted and checked, the cache is emptied after a job."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import app
from app.cli.options import cli_words
from app.core.convert.planner import resolve_device
from app.core.cuda import check_cuda_device, cuda_oom_error, is_cuda_oom
from app.core.errors import InsufficientResourcesError, OptionError
from app.core.jobs import RecordingReporter, Reporter, run_job
from factories import make_gguf

TORCH_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
             "79.15 GiB of which 1.25 GiB is free. Including non-PyTorch memory, this process "
             "has 77.88 GiB memory in use.")


class OutOfMemoryError(RuntimeError):
    """What torch.cuda.OutOfMemoryError looks like from outside."""


@dataclass(frozen=True)
class RunsOutOfVram:
    progress_unit: str = "items"

    @property
    def title(self) -> str:
        return "out of VRAM"

    def run(self, reporter: Reporter) -> None:
        raise OutOfMemoryError(TORCH_OOM)


def test_torchs_out_of_memory_is_a_resource_error_with_the_numbers() -> None:
    error = cuda_oom_error(OutOfMemoryError(TORCH_OOM), "loading model.gguf")
    assert isinstance(error, InsufficientResourcesError)
    assert (error.needed_bytes, error.available_bytes) == (2 * 1024**3, int(1.25 * 1024**3))
    assert "during loading model.gguf: it needed 2.0 GiB more and 1.2 GiB was free" in str(error)
    assert "fewer layers" in str(error) and "smaller quant" in str(error)
    assert error.worded(cli_words).endswith("(--n-gpu-layers)")
    llama = ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1234.50 MiB on device 0: "
             "cudaMalloc failed: out of memory")
    assert is_cuda_oom(RuntimeError(llama))
    assert cuda_oom_error(llama).needed_bytes == int(1234.5 * 1024**2)
    assert not is_cuda_oom(RuntimeError("something else"))


def test_a_job_that_runs_out_of_vram_fails_with_a_sentence() -> None:
    result = run_job(RunsOutOfVram(), RecordingReporter())
    assert result.status == "failed" and result.exit_code == 1
    assert result.error is not None and result.error.startswith("the GPU ran out of memory")
    assert "internal error" not in result.error and result.option is not None


def test_a_device_index_is_accepted_and_checked() -> None:
    assert check_cuda_device("cuda:1", 2) == "cuda:1"
    assert check_cuda_device("cuda", 1) == "cuda"
    with pytest.raises(OptionError, match="there is no GPU 3"):
        check_cuda_device("cuda:3", 2)
    with pytest.raises(OptionError, match="not cpu, cuda or cuda:N"):
        check_cuda_device("cuda:one", 2)
    with pytest.raises(OptionError, match="not one of cpu, cuda, cuda:N or auto"):
        resolve_device("tpu")


def test_the_cli_takes_a_device_index(tmp_path: Path) -> None:
    source = make_gguf(tmp_path / "m.gguf")
    env = {**os.environ, "PYTHONPATH": str(Path(app.__file__).resolve().parents[1]),
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "app", "convert", str(source), "-o",
                             str(tmp_path / "o.gguf"), "--type", "F16", "--device", "cuda:1"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    # parsed and handed to the core, which finds no GPU here (exit 2, nothing written)
    assert result.returncode == 2, result.stderr
    assert "no CUDA GPU here" in result.stderr and "(--device cpu)" in result.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_the_cuda_cache_is_emptied_after_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    cuda = types.SimpleNamespace(is_initialized=lambda: True,
                                 synchronize=lambda: calls.append("synchronize"),
                                 empty_cache=lambda: calls.append("empty_cache"))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    run_job(RunsOutOfVram(), RecordingReporter())
    assert calls == ["synchronize", "empty_cache"]
