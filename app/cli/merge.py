"""`merge`: the models a mergekit YAML names → a safetensors folder (and optionally a GGUF)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from app.cli import add_command
from app.cli.options import add_device_option, add_output_job_flags
from app.cli.output import print_json
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.convert.gguf_shards import parse_split_size
from app.core.errors import BadInputError
from app.core.formats.model_info import format_bytes
from app.core.merge import MergePlan, MergeRequest
from app.core.merge.job import DEFAULT_SHARD_BYTES


def register(commands: argparse._SubParsersAction) -> None:
    merge = add_command(
        commands, "merge",
        description="Merge the models a mergekit YAML configuration names into a new "
                    "safetensors folder. Every tensor of the base model is merged, copied or "
                    "refused, and the merge does not start while any would be missing; "
                    "OUT/merge_report.json records the action per tensor. A model written "
                    "BASE+ADAPTER has its PEFT LoRA adapter merged in first.")
    merge.add_argument("config", type=Path, metavar="CONFIG.yaml", help="mergekit YAML")
    merge.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                       help="the new model folder (written as OUT.part, renamed when done)")
    merge.add_argument("--type", "-t", metavar="T",
                       help="also convert the merged model to a GGUF of type T "
                            "(OUT-T.gguf beside OUT)")
    merge.add_argument("--seed", type=int, help="seed of DARE's random drop (overrides the "
                                                "config's `seed`, default 0)")
    merge.add_argument("--shard-size", default=None, metavar="SIZE",
                       help="largest safetensors shard (default 5GB)")
    merge.add_argument("--allow-partial", action="store_true",
                       help="merge a tensor some inputs lack from those that have it (copied "
                            "when only one has it) instead of refusing")
    merge.add_argument("--dry-run", action="store_true",
                       help="print the plan (the action for every tensor) and write nothing")
    merge.add_argument("--json", action="store_true",
                       help="print the plan (--dry-run) or the result as one JSON document")
    add_device_option(merge, "compute")
    add_output_job_flags(merge)
    merge.set_defaults(handler=cmd_merge)


def describe_plan(plan: MergePlan) -> str:
    counts = plan.counts()
    lines = [f"{plan.config.merge_method} of {len(plan.models)} model(s) into {plan.target}: "
             f"{counts['merged']} merged, {counts['copied']} copied, {counts['refused']} "
             f"refused; {format_bytes(plan.output_bytes)}, peak memory about "
             f"{format_bytes(plan.estimated_peak_bytes)} on {plan.device}"]
    lines += [f"warning: {w}" for w in plan.warnings]
    for action in plan.actions:
        if action.action != "merged":
            lines.append(f"  {action.action:7} {action.name}: {action.reason}")
    return "\n".join(lines)


def cmd_merge(args: argparse.Namespace) -> int:
    if not args.config.is_file():
        raise BadInputError("merge configuration not found", path=args.config)
    shard_bytes = (parse_split_size(args.shard_size, "shard_bytes") if args.shard_size
                   else DEFAULT_SHARD_BYTES)
    request = MergeRequest(args.output, args.config, device=args.device, out_type=args.type,
                           overwrite=args.overwrite, allow_partial=args.allow_partial,
                           shard_bytes=shard_bytes, seed=args.seed,
                           check_memory=not args.ignore_memory_check)
    plan = request.plan()  # bad input raises here: exit 2 with one line, nothing written
    if args.dry_run:
        if args.json:
            print_json(plan.to_json())
        else:
            print(describe_plan(plan))
        if plan.refused:
            from app.core.merge.planner import describe_refusal

            sys.stderr.write(f"modelyard: {describe_refusal(plan.actions)}\n")
            return 2
        return 0
    from app.core.merge.planner import check_plan

    check_plan(plan)  # a refused tensor: exit 2 before anything starts
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose, unit="bytes")
    result = run_in_console(replace(request, program=plan), reporter)
    if result.status != "done":
        return result.exit_code
    value = result.value
    if args.json_progress:
        sys.stdout.write(json.dumps({"event": "result", **value.to_json()}) + "\n")
    elif args.json:
        print_json(value.to_json())
    else:
        gguf = f"; {value.gguf}" if value.gguf else ""
        print(f"{value.output}  {format_bytes(value.bytes_written)}, {value.tensors_written} "
              f"tensors, {value.seconds:.1f} s{gguf}")
    return 0

