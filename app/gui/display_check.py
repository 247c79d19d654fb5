"""Before Qt opens a window: is there a display, and can Qt's X11 plugin load?

Without them Qt aborts the process (exit 134) with "Reinstalling the application may fix this
problem", which names neither cause. These checks name what is missing in one sentence.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Callable, Mapping

# Platform plugins that draw without a display server.
HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "eglfs", "linuxfb", "vkkhrdisplay")
NO_DISPLAY = ("no display to open the window on (DISPLAY and WAYLAND_DISPLAY are not set): "
              "start Modelyard from a desktop session, or use its commands (modelyard --help)")
NO_XCB_CURSOR = ("Qt cannot open a window on X11 without the xcb-cursor library: install it "
                 "(on Debian/Ubuntu the libxcb-cursor0 package)")
# The X11 libraries Qt 6's xcb platform plugin links (ldd of libqxcb.so and libQt6XcbQpa.so)
# that desktop installs often lack, with the Debian/Ubuntu package of each. Any one missing
# makes Qt abort.
XCB_LIBRARIES = {
    "xcb-cursor": "libxcb-cursor0", "xcb-icccm": "libxcb-icccm4",
    "xcb-keysyms": "libxcb-keysyms1", "xcb-image": "libxcb-image0",
    "xcb-render-util": "libxcb-render-util0", "xcb-shape": "libxcb-shape0",
    "xcb-randr": "libxcb-randr0", "xcb-xkb": "libxcb-xkb1", "xcb-sync": "libxcb-sync1",
    "xcb-xfixes": "libxcb-xfixes0", "xcb-shm": "libxcb-shm0", "xcb-util": "libxcb-util1",
    "xkbcommon-x11": "libxkbcommon-x11-0",
}


def display_problem(environ: Mapping[str, str] | None = None, platform: str | None = None,
                    find_library: Callable[[str], str | None] = ctypes.util.find_library
                    ) -> str | None:
    """One sentence naming what stops the window from opening, or None."""
    environ = os.environ if environ is None else environ
    if (platform or sys.platform) != "linux":
        return None
    chosen = environ.get("QT_QPA_PLATFORM", "").split(":", 1)[0].strip().lower()
    if chosen.startswith(HEADLESS_PLATFORMS):
        return None
    has_x11, has_wayland = bool(environ.get("DISPLAY")), bool(environ.get("WAYLAND_DISPLAY"))
    uses_x11 = chosen == "xcb" or (not chosen and not has_wayland)
    if (chosen == "xcb" and not has_x11) or (not has_x11 and not has_wayland):
        return NO_DISPLAY
    if chosen.startswith("wayland") and not has_wayland:
        return NO_DISPLAY
    if not uses_x11:
        return None
    missing = [name for name in XCB_LIBRARIES if find_library(name) is None]
    if missing == ["xcb-cursor"]:
        return NO_XCB_CURSOR
    if missing:
        packages = " ".join(XCB_LIBRARIES[name] for name in missing)
        return (f"Qt cannot open a window on X11 without the {', '.join(missing)} "
                f"{'library' if len(missing) == 1 else 'libraries'}: install them "
                f"(on Debian/Ubuntu: {packages})")
    return None
