"""`modelyard --window-check` (run by the desktop build on its bundle) opens the main window,
reports it shown and exits 0, with settings of its own."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from app.gui.window_check import run_window_check


def test_window_check_shows_the_main_window(qapp) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    assert run_window_check(out) == 0, out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("window check: about: torch "), lines
    assert lines[1].startswith("window check: 'Modelyard' shown at 1280×800"), lines


def test_a_library_without_its_version_fails_the_check(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import app.gui.about

    monkeypatch.setattr(app.gui.about, "library_versions",
                        lambda: [("torch", "not installed"), ("gguf", "0.19.0")])
    out = io.StringIO()
    assert run_window_check(out) == 1
    assert "FAILED: installed without a version: torch" in out.getvalue(), out.getvalue()


def test_the_entry_point_runs_the_window_check() -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "app", "--window-check"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'Modelyard' shown at" in done.stdout, done.stdout
