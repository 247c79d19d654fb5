"""`modelyard --window-check` (run by the desktop build on its bundle) opens the main window,
reports it shown and exits 0, with settings of its own."""

from __future__ import annotations

import io

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
