"""The refusals before a job: VRAM of the device the job names (read from the driver), RAM,
disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core import resource_checks
from app.core.errors import InsufficientResourcesError
from app.core.resources import DiskInfo, GPUInfo

GIB = 1 << 30


@pytest.fixture()
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = (GPUInfo(0, "big", 80 * GIB, 70 * GIB), GPUInfo(1, "small", 8 * GIB, 1 * GIB))
    monkeypatch.setattr(resource_checks, "probe_gpus", lambda: (gpus, None))


@pytest.mark.usefixtures("two_gpus")
def test_vram_is_checked_on_the_device_the_job_names() -> None:
    resource_checks.require_memory("cuda", 0, 10 * GIB)  # cuda is cuda:0, 70 GiB free
    resource_checks.require_memory("cuda:0", 0, 10 * GIB)
    with pytest.raises(InsufficientResourcesError, match="not enough free VRAM") as caught:
        resource_checks.require_memory("cuda:1", 0, 10 * GIB)
    assert caught.value.available_bytes == 1 * GIB
    with pytest.raises(InsufficientResourcesError, match="not enough free VRAM"):
        resource_checks.require_memory("cuda:2", 0, 1)  # no such GPU: nothing is free


def test_ram_and_disk_shortfalls_are_refused(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    with pytest.raises(InsufficientResourcesError, match="not enough free RAM"):
        resource_checks.require_memory("cpu", 1 << 60, 0)
    monkeypatch.setattr(resource_checks, "probe_disk",
                        lambda path: DiskInfo(Path(path), 10**9, 1000))
    with pytest.raises(InsufficientResourcesError, match="the merge needs") as caught:
        resource_checks.require_disk(tmp_path, 5000, "the merge")
    assert caught.value.needed_bytes == 5000 + resource_checks.DISK_MARGIN
