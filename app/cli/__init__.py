"""The command line: a thin layer over app.core; every command the GUI runs, runs here too.

Exit codes: 0 success, 1 a job failed or was cancelled, 2 bad input (path, file, option).
`--json` prints one JSON document on stdout; errors always go to stderr as one line.

Each command's module is imported only when that command runs or its help is asked for, so
`modelyard --help` lists the commands without loading gguf, numpy or torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from app import __version__
from app.cli.options import cli_words
from app.core.errors import ModelyardError

# Command → (module under app.cli that registers it, the one line `modelyard --help` shows).
# Each module registers its commands with `add_command`, which takes the line from here.
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("inventory", "list models found under paths, in the HF cache, Ollama and LM Studio"),
    "inspect": ("inventory", "describe one model"),
    "resources": ("inventory", "RAM, swap, GPUs and free disk"),
    "fit": ("fit", "will it fit: memory needed per device, verdict, best quant"),
    "convert": ("convert", "convert a model: HF/bnb/GGUF → GGUF of a type, or GGUF/bnb → HF "
                           "safetensors"),
    "relayout": ("relayout", "MoE GGUF: experts stacked (current llama.cpp) or one tensor "
                             "each"),
    "imatrix": ("imatrix", "compute an importance matrix (llama.cpp's imatrix format)"),
    "merge": ("merge", "merge models from a mergekit YAML (linear, slerp, ties, dare, "
                       "passthrough, LoRA)"),
    "hub": ("hub", "search, inspect and download models on the Hub"),
    "generate": ("generate", "test generation: load a model and stream its reply to a prompt"),
    "doctor": ("generate", "why a model will not load here, and what to do (exit 2 on errors)"),
    "compare": ("generate", "perplexity, KL divergence and top-1 agreement of a candidate "
                            "against its reference"),
}


def add_command(commands: argparse._SubParsersAction, name: str,
                **options: Any) -> argparse.ArgumentParser:
    """Register command `name` with its one-line help from `COMMANDS`, the only place it is
    written (the full help lists every command from that table without importing modules)."""
    return commands.add_parser(name, help=COMMANDS[name][1], **options)


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"app.cli.{COMMANDS[name][0]}")


def requested_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line: the first argument that is not an option."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s module registered in full (every module for "all"), and a
    one-line entry for each other command."""
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Workbench for local LLM weights. Without a command, opens the window.")
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug log lines")
    parser.add_argument("--self-test", action="store_true",
                        help="scan, convert and test a tiny model; exit 0 when all works")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: list[ModuleType] = []
    if command == "all":
        modules += [command_module(name) for name in COMMANDS]
    elif command in COMMANDS:
        modules.append(command_module(command))
    for module in dict.fromkeys(modules):
        module.register(commands)
    for name, (_module, help_line) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=help_line)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(requested_command(argv))
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
        sys.stderr.write(f"modelyard: {exc.worded(cli_words)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("modelyard: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
