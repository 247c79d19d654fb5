"""`convert`: HF folder (plain or bitsandbytes) or GGUF → GGUF of a type; GGUF or bitsandbytes
checkpoint → plain HF safetensors (`--to hf`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.cli.output import print_json
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.convert import (
    GGUF_OUTPUT_TYPES,
    HF_OUTPUT_DTYPES,
    ConversionPlan,
    ConvertRequest,
    ConvertResult,
    execute_plan,
    writable_output_types,
)
from app.core.convert.summary import summary_lines
from app.core.formats.model_info import format_bytes
from app.core.jobs import Reporter


def register(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert", help="convert a model: HF/bnb/GGUF → GGUF of a type, or GGUF/bnb → HF "
                        "safetensors",
        description="Convert an HF safetensors folder (plain or bitsandbytes 4/8-bit) or a GGUF "
                    "file to a GGUF of type T, or a GGUF or bitsandbytes checkpoint to a plain "
                    "HF safetensors folder with --to hf. Streams one chunk of rows at a time; "
                    "writes OUT.part and renames it when complete.")
    convert.add_argument("source", type=Path, metavar="SRC",
                         help="HF model folder (plain or bitsandbytes) or .gguf file (first "
                              "shard of a split model)")
    convert.add_argument("-o", "--output", type=Path, metavar="OUT",
                         help="output .gguf file or HF folder (default: beside SRC, named "
                              "Name-TYPE.gguf or Name-hf); an existing folder for a GGUF means "
                              "inside it")
    convert.add_argument("--type", "-t", default=None, metavar="T",
                         help=f"GGUF type: {', '.join(GGUF_OUTPUT_TYPES)} (default F16; "
                              f"writable today: {', '.join(writable_output_types())}); each "
                              "tensor gets the type llama-quantize gives it for T; with --to hf "
                              f"the dtype: {', '.join(HF_OUTPUT_DTYPES)}")
    convert.add_argument("--pure", action="store_true",
                         help="every weight in T itself (llama-quantize --pure): no Q6_K "
                              "output tensor, no per-layer bumps")
    convert.add_argument("--to", choices=("gguf", "hf"), default="gguf",
                         help="output format (default gguf)")
    convert.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                         help="where to (de)quantize: auto = CUDA when torch sees a GPU")
    convert.add_argument("--keep-type", metavar="PATTERN",
                         help="GGUF → GGUF: copy tensors whose name matches PATTERN unchanged; "
                              "a shell glob (e.g. '*attn_v*'), or a regular expression written "
                              "'re:...'")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    convert.add_argument("--require-tokenizer", action="store_true",
                         help="fail instead of converting without a tokenizer")
    convert.add_argument("--ignore-memory-check", action="store_true",
                         help="start even when the estimated peak memory exceeds what is free "
                              "(the disk-space check still applies)")
    convert.add_argument("--dry-run", action="store_true",
                         help="print a summary of the plan (tensors by type, operations, output "
                              "size, peak memory, fallbacks) and write nothing")
    convert.add_argument("--json", action="store_true",
                         help="one JSON document on stdout: with --dry-run the whole plan, "
                              "tensor by tensor; else the result")
    convert.add_argument("--json-progress", action="store_true",
                         help="JSON lines on stdout: progress, log and a final result event")
    convert.set_defaults(handler=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    request = ConvertRequest(args.source, args.output, args.type or "F16", to=args.to,
                             device=args.device, keep_type=args.keep_type,
                             overwrite=args.overwrite, require_tokenizer=args.require_tokenizer,
                             pure=args.pure, check_memory=not args.ignore_memory_check)
    plan = request.plan()  # bad input raises here: exit 2 with one line, nothing written
    if args.dry_run:
        if args.json:
            print_json(plan.to_json())
        else:
            print("\n".join(summary_lines(plan)))
        return 0
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose, unit="bytes")
    if not args.json_progress:
        sys.stderr.write(f"{request.title}: {len(plan.tensors)} tensors, "
                         f"{format_bytes(plan.output_bytes)}, peak memory about "
                         f"{format_bytes(plan.estimated_peak_bytes)} on {plan.device}\n")
    result = run_in_console(_PlannedJob(request, plan), reporter)
    if result.status != "done":
        return result.exit_code
    value: ConvertResult = result.value
    if args.json_progress:
        sys.stdout.write(json.dumps({"event": "result", **value.to_json()}) + "\n")
    elif args.json:
        print_json(value.to_json())
    else:
        print(f"{value.output}  {format_bytes(value.bytes_written)}, {value.tensors_written} "
              f"tensors, {value.seconds:.1f} s")
    return 0


class _PlannedJob:
    """The request with its plan already made (the CLI plans first to fail fast)."""

    def __init__(self, request: ConvertRequest, plan: ConversionPlan) -> None:
        self.plan = plan
        self.check_memory = request.check_memory
        self.title = request.title
        self.progress_unit = request.progress_unit

    def run(self, reporter: Reporter) -> ConvertResult:
        return execute_plan(self.plan, reporter, self.check_memory)
