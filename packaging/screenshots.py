"""Render the README screenshots headless:
`python packaging/screenshots.py [--select MODEL] [--target VRAM_GIB,RAM_GIB,CTX] FOLDER...`.

Opens the main window offscreen with the given model folders (settings in a temp file, so the
user's own are untouched), selects the first model and saves resources/screenshots/*.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

OUT = Path(__file__).resolve().parents[1] / "resources" / "screenshots"


def main(folders: list[str], select: str | None = None,
         target: tuple[float, float, int] | None = None) -> None:
    from app.gui.application import create_application
    from app.gui.settings import AppSettings

    app = create_application()
    from app.gui.main_window import MainWindow

    with tempfile.TemporaryDirectory() as tmp:
        settings = AppSettings(Path(tmp) / "settings.ini")
        settings.set_folders([Path(f).absolute() for f in folders])
        settings.set_show_hf_cache(False)
        settings.set_log_dir(Path(tmp) / "logs")
        if target is not None:  # a GPU/RAM to judge for, so the badges show every colour
            settings.set_fit_parameters("custom", target[0], target[1], target[2])
        window = MainWindow(settings)
        window.resize(1360, 820)
        window.show()
        def settle() -> None:
            deadline = time.monotonic() + 60
            while ((window.queue.active() or window.background.busy())
                   and time.monotonic() < deadline):
                app.processEvents()
                time.sleep(0.02)
            app.processEvents()

        settle()
        row = next((r for r in range(window.proxy.rowCount())
                    if window.proxy.index(r, 0).data() == select), 0)
        window.table.selectRow(row)
        settle()
        OUT.mkdir(parents=True, exist_ok=True)
        window.grab().save(str(OUT / "main-window.png"))
        window.details.setCurrentWidget(window.details.tensors)
        app.processEvents()
        window.grab().save(str(OUT / "tensors.png"))
        window.details.setCurrentWidget(window.details.fit)
        settle()
        window.grab().save(str(OUT / "fit.png"))
        window.close()
    print(f"saved to {OUT}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    chosen, custom = None, None
    while arguments[:1] in (["--select"], ["--target"]):
        if arguments[0] == "--select":
            chosen = arguments[1]
        else:
            vram, ram, ctx = arguments[1].split(",")
            custom = (float(vram), float(ram), int(ctx))
        arguments = arguments[2:]
    main(arguments, chosen, custom)
