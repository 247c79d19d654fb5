"""`convert`: HF folder (plain or bitsandbytes) or GGUF → GGUF of a type; GGUF or bitsandbytes
checkpoint → plain HF safetensors (`--to hf`)."""

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
from app.core.convert import (
    GGUF_OUTPUT_TYPES,
    HF_OUTPUT_DTYPES,
    ConvertRequest,
    ConvertResult,
    writable_output_types,
)
from app.core.convert.summary import summary_lines
from app.core.errors import OptionError
from app.core.formats.model_info import format_bytes
from app.core.quant.overrides import TypeOverrides
from app.core.quant.size_target import parse_size

# Stands for the writable types in the help text: finding them plans a set of models for every
# target, work only `--help` needs, so the help formatter fills it in when help is printed.
_WRITABLE = "<writable types>"


class _HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is not None and _WRITABLE in text:
            text = text.replace(_WRITABLE, ", ".join(writable_output_types()))
        return text


def register(commands: argparse._SubParsersAction) -> None:
    convert = add_command(
        commands, "convert", formatter_class=_HelpFormatter,
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
                         help=f"GGUF type: {', '.join(GGUF_OUTPUT_TYPES)} (required for a GGUF "
                              "source; for an HF source the default is the best type that "
                              "fits this machine; "
                              f"writable today: {_WRITABLE}); each "
                              "tensor gets the type llama-quantize gives it for T; with --to hf "
                              f"the dtype: {', '.join(HF_OUTPUT_DTYPES)}")
    convert.add_argument("--pure", action="store_true",
                         help="every weight in T itself (llama-quantize --pure): no Q6_K "
                              "output tensor, no per-layer bumps")
    convert.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                         help="give tensors whose GGUF name contains a match of the regular "
                              "expression PATTERN the type TYPE (repeatable; the first matching "
                              "pattern wins; as llama-quantize --tensor-type)")
    convert.add_argument("--output-tensor-type", metavar="TYPE",
                         help="type of output.weight (as llama-quantize)")
    convert.add_argument("--token-embedding-type", metavar="TYPE",
                         help="type of token_embd.weight (as llama-quantize)")
    convert.add_argument("--imatrix", type=Path, metavar="FILE",
                         help="importance matrix (llama.cpp's imatrix .gguf or .dat) weighting "
                              "the quantizers as llama-quantize --imatrix does; tensors it does "
                              "not cover are quantized without it")
    convert.add_argument("--target-size", metavar="SIZE",
                         help="choose each weight's type to fit the file in SIZE (e.g. 4.2GiB) "
                              "with the least total quantization error, measured on the "
                              "tensors (weighted by --imatrix when given); --type sets the "
                              "file type recorded and the types of the other tensors")
    convert.add_argument("--fit-gpu", action="store_true",
                         help="like --target-size, sized so that the whole model runs on this "
                              "machine's GPU (or one with --vram GiB free) at --ctx tokens")
    convert.add_argument("--ctx", type=int, default=4096, metavar="N",
                         help="context the model must fit with for --fit-gpu (default 4096)")
    convert.add_argument("--vram", type=float, metavar="GiB",
                         help="--fit-gpu for a GPU with this much free memory")
    convert.add_argument("--to", choices=("gguf", "hf"), default="gguf",
                         help="output format (default gguf)")
    convert.add_argument("--keep-type", metavar="PATTERN",
                         help="GGUF → GGUF: copy tensors whose name matches PATTERN unchanged; "
                              "a shell glob (e.g. '*attn_v*'), or a regular expression written "
                              "'re:...'")
    convert.add_argument("--require-tokenizer", action="store_true",
                         help="fail instead of converting without a tokenizer")
    convert.add_argument("--dry-run", action="store_true",
                         help="print a summary of the plan (tensors by type, operations, output "
                              "size, peak memory, fallbacks) and write nothing")
    convert.add_argument("--json", action="store_true",
                         help="one JSON document on stdout: with --dry-run the whole plan, "
                              "tensor by tensor; else the result")
    add_device_option(convert, "(de)quantize")
    add_output_job_flags(convert)
    convert.set_defaults(handler=cmd_convert)


def default_type(source: Path, to: str) -> tuple[str, str | None]:
    """The type to write when --type is not given, and the sentence that says why.

    A GGUF is already a choice of type: guessing one could silently turn a Q4_1 into a much
    bigger F16 (or stack a second quantization error), so the user must say which.
    """
    if to == "hf":
        return "F16", None
    from app.core.estimate.candidates import conversion_candidates
    from app.core.estimate.verdict import Machine, recommend
    from app.core.formats.scan import inspect_path
    from app.core.resources import probe_resources

    model = inspect_path(source)
    if model.format == "gguf":
        raise OptionError(f"{source} is a {model.quantization or ''} GGUF: say which type to "
                          "convert it to with --type (e.g. Q8_0 or Q4_K_M); types: "
                          f"{', '.join(GGUF_OUTPUT_TYPES)}")
    fits = recommend(conversion_candidates(model, writable_only=True),
                     Machine.from_resources(probe_resources()))
    chosen = next((f for f in fits if f.recommended), None)
    if chosen is None:
        return "F16", "no --type given and no type fits this machine: writing F16"
    return chosen.candidate.quant, (f"no --type given: writing {chosen.candidate.quant}, the "
                                    "best type that fits this machine "
                                    f"({chosen.verdict.text.split(':')[0]})")


def cmd_convert(args: argparse.Namespace) -> int:
    overrides = TypeOverrides.parse(args.tensor_type, args.output_tensor_type,
                                    args.token_embedding_type)  # bad values: exit 2
    out_type, why = (args.type, None) if args.type else default_type(args.source, args.to)
    request = ConvertRequest(args.source, args.output, out_type, to=args.to,
                             device=args.device, keep_type=args.keep_type,
                             overwrite=args.overwrite, require_tokenizer=args.require_tokenizer,
                             pure=args.pure, check_memory=not args.ignore_memory_check,
                             type_overrides=overrides or None, imatrix=args.imatrix,
                             target_size=(parse_size(args.target_size)
                                          if args.target_size is not None else None),
                             fit_gpu_vram=_fit_gpu_vram(args) if args.fit_gpu else None,
                             fit_gpu_context=args.ctx)
    plan = request.plan()  # bad input raises here: exit 2 with one line, nothing written
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose, unit="bytes")
    if request.target_size is not None or request.fit_gpu_vram is not None:
        plan = request.fit_to_size(plan, reporter)
        reporter.end_line()
        if not args.json_progress:
            sys.stderr.write(plan.notes[-1] + "\n")
    if args.dry_run:
        if why:
            sys.stderr.write(why + "\n")
        if args.json:
            print_json(plan.to_json())
        else:
            print("\n".join(summary_lines(plan)))
        return 0
    if why:
        reporter.log("info", why)
    if not args.json_progress:
        sys.stderr.write(f"{request.title}: {len(plan.tensors)} tensors, "
                         f"{format_bytes(plan.output_bytes)}, peak memory about "
                         f"{format_bytes(plan.estimated_peak_bytes)} on {plan.device}\n")
    result = run_in_console(replace(request, program=plan), reporter)
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


def _fit_gpu_vram(args: argparse.Namespace) -> int:
    """The free VRAM of the GPU to fit: `--vram`'s, as `fit` reads it, or this machine's."""
    from app.cli.fit import target_machine

    gpus = target_machine(args.vram).gpu_free
    if not gpus:
        raise OptionError("--fit-gpu: no GPU found on this machine",
                          hint="give the free memory of the GPU to fit with --vram GiB")
    return gpus[0]

