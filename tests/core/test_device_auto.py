"""Choosing the device for a job asks the driver (NVML) and the installed torch's files, never
torch itself: the window plans conversions and must not load torch or create a CUDA context.
The job's child makes the last check with torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import app
from app.core import cuda, resources
from app.core.cuda import resolve_device, torch_build_has_cuda, torch_device
from app.core.errors import OptionError
from factories import make_hf_model

ROOT = Path(app.__file__).resolve().parents[1]

# A driver with one GPU, as pynvml would report it; the module is put in sys.modules.
FAKE_NVML = """
import sys, types
class NVMLError(Exception):
    value = 0
class Memory:
    total, free = 80 << 30, 70 << 30
nvml = types.ModuleType("pynvml")
nvml.NVMLError = NVMLError
nvml.nvmlInit = lambda: None
nvml.nvmlDeviceGetCount = lambda: {count}
nvml.nvmlDeviceGetHandleByIndex = lambda i: i
nvml.nvmlDeviceGetUUID = lambda h: "GPU-%d" % h
nvml.nvmlDeviceGetName = lambda h: b"Fake GPU"
nvml.nvmlDeviceGetMemoryInfo = lambda h: Memory()
sys.modules["pynvml"] = nvml
"""

PLAN = """
from app.core.convert import plan_conversion
plan = plan_conversion({source!r}, {target!r}, out_type="Q8_0", to="gguf", device="auto")
print(json.dumps({{"device": plan.device, "torch": "torch" in sys.modules}}))
"""


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("device-auto") / "llama")


def _plan_in_child(tmp_path: Path, source: Path, nvml: str,
                   fake_torch_cuda: str | None) -> dict[str, object]:
    """Plan the conversion of `source` with device auto in a fresh interpreter, as the window
    does; with `fake_torch_cuda`, a stand-in torch package (built for that CUDA version)
    shadows the real one and records any import of it."""
    marker = tmp_path / "torch-imported"
    path = [str(ROOT)]
    if fake_torch_cuda is not None:
        package = tmp_path / "fake" / "torch"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('torch was imported')\n")
        (package / "version.py").write_text(
            f"from typing import Optional\n__version__ = '2.13.0+cu128'\n"
            f"cuda: Optional[str] = {fake_torch_cuda!r}\n")
        path.insert(0, str(package.parent))
    script = "import json, sys\n" + nvml + PLAN.format(source=str(source),
                                                        target=str(tmp_path / "o.gguf"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "planning imported torch"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_auto_picks_the_gpu_the_driver_reports_without_importing_torch(
        tmp_path: Path, hf_source: Path) -> None:
    one_gpu = textwrap.dedent(FAKE_NVML).format(count=1)
    outcome = _plan_in_child(tmp_path, hf_source, one_gpu, "12.8")
    assert outcome == {"device": "cuda", "torch": False}


def test_auto_without_nvml_is_the_cpu_and_imports_no_torch(
        tmp_path: Path, hf_source: Path) -> None:
    missing = "import sys\nsys.modules['pynvml'] = None  # import pynvml fails\n"
    assert _plan_in_child(tmp_path, hf_source, missing, None) == {"device": "cpu", "torch": False}


def test_auto_with_a_cpu_build_of_torch_is_the_cpu(tmp_path: Path, hf_source: Path) -> None:
    one_gpu = textwrap.dedent(FAKE_NVML).format(count=1)
    outcome = _plan_in_child(tmp_path, hf_source, one_gpu, None)
    # real torch on the path here is a CPU build; its files say so without an import
    if torch_build_has_cuda():
        pytest.skip("the installed torch is a CUDA build")
    assert outcome == {"device": "cpu", "torch": False}


@pytest.fixture()
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    gpu = resources.GPUInfo(0, "Fake GPU", 80 << 30, 70 << 30)
    monkeypatch.setattr(resources, "probe_gpus", lambda: ((gpu,), None))
    return monkeypatch


def test_a_cuda_device_is_checked_against_the_driver_and_the_torch_build(
        one_gpu: pytest.MonkeyPatch) -> None:
    one_gpu.setattr(cuda, "torch_build_has_cuda", lambda: True)
    assert resolve_device("cuda") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(OptionError, match="there is no GPU 1"):
        resolve_device("cuda:1")
    one_gpu.setattr(cuda, "torch_build_has_cuda", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(OptionError, match="torch is a CPU build"):
        resolve_device("cuda")
    one_gpu.setattr(resources, "probe_gpus", lambda: ((), "the NVIDIA driver did not answer"))
    assert resolve_device("auto") == "cpu"
    with pytest.raises(OptionError, match="no CUDA GPU here"):
        resolve_device("cuda")


def test_the_child_refuses_a_gpu_torch_cannot_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="torch sees no usable CUDA GPU"):
        torch_device("cuda:0")
    assert torch_device("cpu") == torch.device("cpu")


def test_planning_a_gguf_requantization_imports_no_torch(tmp_path: Path) -> None:
    """The window plans GGUF → GGUF too: whether a type can be read is a plain table."""
    from factories import make_gguf

    source = make_gguf(tmp_path / "src.gguf")
    result = _plan_in_child(tmp_path, source, FAKE_NVML.format(count=0), fake_torch_cuda=None)
    assert result["torch"] is False
