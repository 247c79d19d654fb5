"""GPUs come from NVML, never from torch; no GPU or no driver is a normal state."""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.core import resources
from app.core.resources import GPUInfo, probe_gpus


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class Memory:
    total: int
    free: int


def fake_nvml(gpus: list[tuple[str, int, int]], init_error: int | None = None,
              ) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    module.NVML_ERROR_LIBRARY_NOT_FOUND = 12  # type: ignore[attr-defined]
    module.NVML_ERROR_DRIVER_NOT_LOADED = 9  # type: ignore[attr-defined]
    module.NVML_ERROR_NOT_FOUND = 6  # type: ignore[attr-defined]

    def init() -> None:
        if init_error is not None:
            raise FakeNVMLError(init_error)

    module.nvmlInit = init  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(gpus)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h}abc"  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda h: gpus[h][0].encode()  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = lambda h: Memory(gpus[h][1], gpus[h][2])  # type: ignore[attr-defined]
    return module


@pytest.fixture()
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setattr(resources, "_nvml_state", {})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield monkeypatch


def test_each_gpu_with_its_free_memory(nvml: pytest.MonkeyPatch) -> None:
    nvml.setitem(sys.modules, "pynvml", fake_nvml([("H200", 141 << 30, 100 << 30),
                                                   ("L4", 24 << 30, 20 << 30)]))
    assert probe_gpus() == ((GPUInfo(0, "H200", 141 << 30, 100 << 30),
                             GPUInfo(1, "L4", 24 << 30, 20 << 30)), None)


def test_cuda_visible_devices_renumbers_as_cuda_does(nvml: pytest.MonkeyPatch) -> None:
    nvml.setitem(sys.modules, "pynvml", fake_nvml([("A", 8, 4), ("B", 16, 8), ("C", 32, 16)]))
    nvml.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-0abc")
    assert [(g.index, g.name) for g in probe_gpus()[0]] == [(0, "C"), (1, "A")]
    resources._nvml_state.clear()
    nvml.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe_gpus() == ((), None)


def test_no_driver_is_no_gpu_and_no_complaint(nvml: pytest.MonkeyPatch) -> None:
    nvml.setitem(sys.modules, "pynvml", fake_nvml([], init_error=12))
    assert probe_gpus() == ((), None)


def test_a_driver_that_fails_is_no_gpu_with_the_reason(nvml: pytest.MonkeyPatch) -> None:
    nvml.setitem(sys.modules, "pynvml", fake_nvml([], init_error=999))
    gpus, note = probe_gpus()
    assert gpus == () and note is not None and "NVML error 999" in note


def test_without_nvidia_ml_py_a_driverless_machine_has_no_note(
        nvml: pytest.MonkeyPatch) -> None:
    nvml.setitem(sys.modules, "pynvml", None)  # import fails
    nvml.setattr(resources, "nvidia_driver_present", lambda: False)
    assert probe_gpus() == ((), None)
    resources._nvml_state.clear()
    nvml.setattr(resources, "nvidia_driver_present", lambda: True)
    assert probe_gpus() == ((), "nvidia-ml-py is not installed")


def test_probing_resources_imports_no_torch() -> None:
    code = ("import sys\nfrom app.core.resources import probe_resources\n"
            "r = probe_resources()\nprint('torch' in sys.modules, r.ram_total > 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.split() == ["False", "True"], result.stderr
