"""`modelyard --window-check` (run by the desktop build on its bundle) opens the main window,
reports it shown and exits 0, with settings of its own."""

from __future__ import annotations

import io

from app.gui.window_check import run_window_check


def test_window_check_shows_the_main_window(qapp) -> None:  # type: ignore[no-untyped-def]
    out = io.StringIO()
    assert run_window_check(out) == 0, out.getvalue()
    assert out.getvalue().startswith("window check: ok, 'Modelyard' shown at 1280×800"), \
        out.getvalue()
