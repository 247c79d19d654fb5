"""The packaging files are complete and well formed, and resources are found both from a
checkout and inside a PyInstaller bundle."""

from __future__ import annotations

import configparser
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from app import resource_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def test_desktop_entry_and_metainfo() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(PACKAGING / "modelyard.desktop", encoding="utf-8")
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Exec"].startswith("modelyard")
    assert desktop["Icon"] == "modelyard"
    info = ET.parse(PACKAGING / "io.github.modelyard.Modelyard.metainfo.xml").getroot()
    assert info.get("type") == "desktop-application"
    assert info.findtext("launchable") == "modelyard.desktop"
    assert info.findtext("provides/binary") == "modelyard"


def test_icons_exist_in_every_size() -> None:
    hicolor = ROOT / "resources" / "icons" / "hicolor"
    for size in (16, 32, 48, 64, 128, 256, 512):
        png = hicolor / f"{size}x{size}" / "modelyard.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_spec_bundles_resources_and_the_build_checks_the_app() -> None:
    spec = (PACKAGING / "modelyard.spec").read_text()
    assert '"resources"' in spec and "launcher.py" in spec
    build = (PACKAGING / "build.sh").read_text()
    for check in ("--version", "--self-test", "--window-check"):
        assert f'"$APP" {check}' in build, check
    assert "modelyard.spec" in build


def test_the_build_pins_torch_and_llama_cpp_and_the_script_parses() -> None:
    build = PACKAGING / "build.sh"
    text = build.read_text()
    assert 'TORCH_SPEC="${TORCH_SPEC:-torch==' in text
    assert 'LLAMA_SPEC="${LLAMA_SPEC:-llama-cpp-python==' in text
    assert subprocess.run(["bash", "-n", str(build)], capture_output=True).returncode == 0


def test_the_build_stays_out_of_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    for path in ("build/", "dist/", "resources/selftest/"):
        assert path in ignored, path


def test_resources_in_a_bundle(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert resource_files.resource_path("modelyard.svg") == ROOT / "resources" / "modelyard.svg"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resource_files.resource_path("style.qss") == tmp_path / "resources" / "style.qss"
