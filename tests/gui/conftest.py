from __future__ import annotations

from pathlib import Path

import pytest

from app.gui.settings import AppSettings


@pytest.fixture()
def settings(tmp_path: Path) -> AppSettings:
    """Settings in a temp file, an empty HF cache and logs under tmp: nothing of the user's."""
    settings = AppSettings(tmp_path / "settings.ini")
    settings.set_hf_cache_dir(tmp_path / "hf-cache")
    settings.set_log_dir(tmp_path / "logs")
    return settings
