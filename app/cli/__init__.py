"""The command line: a thin layer over app.core; every command the GUI runs, runs here too.

Exit codes: 0 success, 1 a job failed or was cancelled, 2 bad input (path, file, option).
`--json` prints one JSON document on stdout; errors always go to stderr as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app import __version__
from app.cli import convert, fit, generate, inventory
from app.core.errors import ModelyardError

COMMAND_MODULES = (inventory, fit, convert, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Workbench for local LLM weights. Without a command, opens the window.")
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug log lines")
    parser.add_argument("--self-test", action="store_true",
                        help="scan, convert and test a tiny model; exit 0 when all works")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        from app.self_test import run_self_test

        return run_self_test()
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except ModelyardError as exc:
        sys.stderr.write(f"modelyard: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("modelyard: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
