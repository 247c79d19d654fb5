"""`relayout`: a MoE GGUF with its experts stacked (current llama.cpp) or split (one tensor per
expert), by moving quantized bytes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli import add_command
from app.cli.options import add_output_job_flags
from app.cli.output import print_json
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.convert.gguf_shards import parse_split_size
from app.core.convert.job import ConvertResult
from app.core.convert.relayout import LAYOUTS, PlannedRelayout, RelayoutRequest
from app.core.formats.gguf_model import GGUF_EXPERT_LAYOUTS
from app.core.formats.model_info import format_bytes


def register(commands: argparse._SubParsersAction) -> None:
    relayout = add_command(
        commands, "relayout",
        description="Rewrite a mixture-of-experts GGUF with its experts in the other layout by "
                    "moving their quantized bytes: nothing is dequantized, every other tensor "
                    "and every metadata key is copied unchanged. "
                    f"stacked: {GGUF_EXPERT_LAYOUTS['stacked']}. "
                    f"split: {GGUF_EXPERT_LAYOUTS['split']}.")
    relayout.add_argument("source", type=Path, metavar="SRC",
                          help=".gguf file (first shard of a split model)")
    relayout.add_argument("-o", "--output", type=Path, metavar="OUT",
                          help="output .gguf file (default: beside SRC, named "
                               "Name-stacked-experts.gguf or Name-split-experts.gguf)")
    relayout.add_argument("--experts", choices=LAYOUTS, required=True,
                          help="the layout to write")
    relayout.add_argument("--split-max-size", metavar="SIZE",
                          help="write shards of at most SIZE (e.g. 500M, 4G) named "
                               "OUT-00001-of-0000N.gguf, as gguf-split does; by default a split "
                               "input keeps its number of shards and one file stays one file")
    relayout.add_argument("--dry-run", action="store_true",
                          help="print the plan as JSON and write nothing")
    add_output_job_flags(relayout)
    relayout.set_defaults(handler=cmd_relayout)


def cmd_relayout(args: argparse.Namespace) -> int:
    split_max = parse_split_size(args.split_max_size) if args.split_max_size else None
    request = RelayoutRequest(args.source, args.output, args.experts, overwrite=args.overwrite,
                              split_max_bytes=split_max,
                              check_memory=not args.ignore_memory_check)
    planned = request.plan()  # bad input raises here: exit 2 with one line, nothing written
    if args.dry_run:
        print_json(planned.to_json())
        return 0
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose, unit="bytes")
    if not args.json_progress:
        shards = f" in {len(planned.plans)} shards" if len(planned.plans) > 1 else ""
        sys.stderr.write(f"{request.title}: {planned.n_tensors} tensors{shards}, "
                         f"{format_bytes(planned.output_bytes)}\n")
    result = run_in_console(PlannedRelayout.of(request, planned), reporter)
    if result.status != "done":
        return result.exit_code
    value: ConvertResult = result.value
    if args.json_progress:
        sys.stdout.write(json.dumps({"event": "result", **value.to_json()}) + "\n")
    else:
        shards = f" (first of {len(planned.plans)} shards)" if len(planned.plans) > 1 else ""
        print(f"{value.output}{shards}  {format_bytes(value.bytes_written)}, "
              f"{value.tensors_written} tensors, {value.seconds:.1f} s")
    return 0
