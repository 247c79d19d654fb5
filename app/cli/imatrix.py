"""`imatrix`: an importance matrix for an HF model from a calibration text."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli import add_command
from app.cli.options import add_output_job_flags
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.imatrix import DEFAULT_CHUNK_SIZE, ImatrixRequest, ImatrixResult


def register(commands: argparse._SubParsersAction) -> None:
    imatrix = add_command(
        commands, "imatrix",
        description="Run an HF model over a calibration text in chunks and write the summed "
                    "squared inputs of every weight matrix of its blocks, per column (per "
                    "expert for MoE), as llama.cpp's imatrix GGUF; `convert --imatrix` and "
                    "llama-quantize --imatrix read it.")
    imatrix.add_argument("source", type=Path, metavar="MODEL", help="HF model folder")
    imatrix.add_argument("--text", type=Path, required=True, metavar="FILE",
                         help="calibration text (UTF-8)")
    imatrix.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                         help="the imatrix .gguf to write")
    imatrix.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N",
                         help=f"tokens per chunk (default {DEFAULT_CHUNK_SIZE})")
    imatrix.add_argument("--chunks", type=int, default=None, metavar="N",
                         help="use only the first N chunks of the text")
    imatrix.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    add_output_job_flags(imatrix, memory_check=False)
    imatrix.set_defaults(handler=cmd_imatrix)


def cmd_imatrix(args: argparse.Namespace) -> int:
    request = ImatrixRequest(args.source, args.text, args.output, chunk_size=args.chunk_size,
                             max_chunks=args.chunks, use_gpu=not args.cpu,
                             overwrite=args.overwrite)
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose,
                               unit="items")
    result = run_in_console(request, reporter)
    if result.status != "done":
        return result.exit_code
    value: ImatrixResult = result.value
    if args.json_progress:
        sys.stdout.write(json.dumps({"event": "result", **value.to_json()}) + "\n")
    else:
        print(f"{value.output}  {value.entries} matrices, {value.chunks} chunks, "
              f"{value.tokens} tokens")
    return 0
