"""`python -m app` / `modelyard`: no arguments opens the window, a command runs the CLI."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

JOB_CHILD_FLAG = "--job-child"
# Opens the main window, reports it and closes it: the desktop build's check of its bundle.
WINDOW_CHECK_FLAG = "--window-check"


def main(argv: Sequence[str] | None = None) -> int:
    # GPUs are numbered as NVML numbers them (app/core/resources.py), for CUDA too.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    args = list(sys.argv[1:] if argv is None else argv)
    if args == [JOB_CHILD_FLAG]:
        # A frozen build has no `python -m`: the window starts its job processes this way.
        from app.core.jobs_child import main as job_child_main

        return job_child_main()
    if args == [WINDOW_CHECK_FLAG]:
        from app.gui.window_check import run_window_check

        return run_window_check()
    if not args:
        from app.gui.application import run_gui

        return run_gui()
    from app.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
