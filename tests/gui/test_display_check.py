"""Starting the window where it cannot open says what is missing and exits 2 (never Qt's
abort with exit 134)."""

from __future__ import annotations

import os
import subprocess
import sys

from app.gui.display_check import NO_DISPLAY, NO_XCB_CURSOR, display_problem


def test_no_display_is_named_in_one_line_and_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["QT_QPA_PLATFORM"] = "xcb"
    done = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "Reinstalling" not in lines[0]


def test_a_missing_xcb_cursor_library_names_the_package() -> None:
    only_cursor = display_problem({"DISPLAY": ":0"}, "linux",
                                  lambda name: None if name == "xcb-cursor" else f"lib{name}.so")
    assert only_cursor == NO_XCB_CURSOR and "libxcb-cursor0" in only_cursor
    assert display_problem({"DISPLAY": ":0"}, "linux", lambda name: f"lib{name}.so") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", lambda name: None) is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux", lambda n: None) is None
    assert display_problem({}, "linux") == NO_DISPLAY
    assert display_problem({}, "darwin") is None


def test_every_missing_xcb_library_is_named_with_its_package() -> None:
    """This machine class lacks xcb-icccm and xcb-keysyms: Qt aborted with exit 134."""
    present = {"xcb-cursor", "xcb-image", "xcb-render-util", "xcb-shape", "xcb-randr", "xcb-xkb",
               "xcb-sync", "xcb-xfixes", "xcb-shm", "xcb-util", "xkbcommon-x11"}
    missing = display_problem({"DISPLAY": ":0"}, "linux",
                              lambda name: f"lib{name}.so" if name in present else None)
    assert missing is not None
    assert "xcb-icccm, xcb-keysyms" in missing
    assert "libxcb-icccm4 libxcb-keysyms1" in missing
