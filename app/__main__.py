"""`python -m app` / `modelyard`: no arguments opens the window, a command runs the CLI."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # GPUs are numbered as NVML numbers them (app/core/resources.py), for CUDA too.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        from app.gui.application import run_gui

        return run_gui()
    from app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
