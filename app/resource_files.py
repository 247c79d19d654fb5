"""Where the files under resources/ (icons, style, the self-test model) are: beside the `app`
package in a checkout, or inside a PyInstaller bundle, which unpacks them under sys._MEIPASS."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    """A file under resources/ (it may not exist: callers that can do without check)."""
    return resources_dir().joinpath(*parts)
