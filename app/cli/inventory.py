"""`scan`, `inspect` and `resources`: what models and what machine there are."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.cli import add_command
from app.cli.output import print_json, render_table
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.errors import BadInputError, FormatError
from app.core.formats.model_info import ModelInfo, format_bytes, format_count
from app.core.formats.scan import INCOMPLETE_TEXT, ScanRequest, ScanResult, inspect_path
from app.core.resources import probe_resources

# The JSON's `source` values as the table shows them.
SOURCE_WORDS = {"folder": "folder", "hf-cache": "HF cache", "ollama": "Ollama",
                "lmstudio": "LM Studio", "hub": "Hub"}


def register(commands: argparse._SubParsersAction) -> None:
    scan = add_command(commands, "scan")
    scan.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    scan.add_argument("--no-hf-cache", action="store_true",
                      help="do not list the Hugging Face cache")
    scan.add_argument("--no-app-libraries", action="store_true",
                      help="do not list Ollama's and LM Studio's models")
    scan.add_argument("--json", action="store_true", help="one JSON document on stdout")
    scan.set_defaults(handler=cmd_scan)

    inspect = add_command(commands, "inspect")
    inspect.add_argument("path", type=Path, metavar="PATH")
    inspect.add_argument("--tensors", action="store_true",
                         help="list every tensor: name, type, shape, bytes")
    inspect.add_argument("--json", action="store_true", help="one JSON document on stdout")
    inspect.set_defaults(handler=cmd_inspect)

    resources = add_command(commands, "resources")
    resources.add_argument("--path", type=Path, default=Path.cwd(),
                           help="folder whose disk to measure (default: current folder)")
    resources.add_argument("--json", action="store_true", help="one JSON document on stdout")
    resources.set_defaults(handler=cmd_resources)


def cmd_scan(args: argparse.Namespace) -> int:
    for path in args.paths:
        if not os.path.lexists(path.expanduser()):
            raise BadInputError("no such file or folder", path=path)
    request = ScanRequest(tuple(args.paths), include_hf_cache=not args.no_hf_cache,
                          include_app_libraries=not args.no_app_libraries)
    reporter = ConsoleReporter(verbose=args.verbose, unit="folders")
    result = run_in_console(request, reporter)
    if result.status != "done":
        return result.exit_code
    found: ScanResult = result.value
    if args.json:
        print_json({"models": [m.to_json() for m in found.models],
                     "problems": [{"path": str(p.path), "text": p.text} for p in found.problems],
                     "incomplete": [i.to_json() for i in found.incomplete]})
        return 0
    rows = [(m.name, m.format.upper(), m.architecture or "?", format_count(m.parameters),
             m.quantization or "?", format_bytes(m.file_size), len(m.problems),
             SOURCE_WORDS.get(m.source, m.source))
            for m in found.models]
    print(render_table(("Name", "Format", "Arch", "Params", "Quant", "Size", "Problems",
                        "Source"), rows, right_align=(3, 5, 6)) if rows else "no models found")
    for model in found.models:
        for problem in model.problems:
            print(f"  {model.name}: {problem.text}")
    for leftover in found.incomplete:
        print(f"{leftover.path} ({format_bytes(leftover.size_bytes)}): {INCOMPLETE_TEXT}")
    return 0


def _moe_text(model: ModelInfo) -> str:
    if model.moe is None:
        return "no"
    used = f", {model.moe.n_experts_used} per token" if model.moe.n_experts_used else ""
    layout = f", experts {model.moe.layout}" if model.moe.layout else ""
    return f"{model.moe.n_experts} experts{used}{layout}"


def describe_text(model: ModelInfo) -> list[tuple[str, str]]:
    types = ", ".join(f"{t} {n}" for t, n in model.tensor_types.items())
    return [
        ("path", str(model.path)),
        ("format", model.format.upper()),
        ("architecture", model.architecture or "unknown"),
        ("parameters", f"{format_count(model.parameters)} ({model.parameters:,})"),
        ("file size", f"{format_bytes(model.file_size)} ({model.file_size:,} bytes)"),
        ("files", str(len(model.files))),
        ("tensors", f"{model.n_tensors}: {types}" if types else "0"),
        ("quantization", model.quantization or "unknown"),
        ("context", str(model.context_length or "unknown")),
        ("layers", str(model.n_layers or "unknown")),
        ("MoE", _moe_text(model)),
        *([("expert layout", model.moe.explanation)] if model.moe and model.moe.explanation
          else []),
        ("tokenizer", "yes" if model.has_tokenizer else "no"),
    ]


def cmd_inspect(args: argparse.Namespace) -> int:
    model = inspect_path(args.path)
    fatal = model.fatal_problems
    if fatal:
        raise FormatError(fatal[0].text, path=args.path)
    if args.json:
        print_json(model.to_json(with_tensors=args.tensors))
        return 0
    print(model.name)
    for key, value in describe_text(model):
        print(f"  {key:<13} {value}")
    print(f"  {'problems':<13} {'none' if not model.problems else ''}")
    for problem in model.problems:
        print(f"    - {problem.text}")
        if problem.kind == "expert-layout":
            print(f"      fix: modelyard relayout {model.path} --experts stacked -o OUT.gguf")
    if args.tensors:
        rows = [(t.name, t.type, "×".join(map(str, t.shape)), f"{t.n_bytes:,}")
                for t in model.tensors]
        print()
        print(render_table(("Tensor", "Type", "Shape", "Bytes"), rows, right_align=(3,)))
    return 0


def cmd_resources(args: argparse.Namespace) -> int:
    res = probe_resources(args.path)
    if args.json:
        print_json(res.to_json())
        return 0
    print(f"RAM   {format_bytes(res.ram_available)} available of {format_bytes(res.ram_total)}")
    print(f"swap  {format_bytes(res.swap_free)} free of {format_bytes(res.swap_total)}")
    if res.gpus:
        for gpu in res.gpus:
            print(f"GPU {gpu.index} {gpu.name}: {format_bytes(gpu.free_bytes)} free of "
                  f"{format_bytes(gpu.total_bytes)}")
    else:
        print(f"GPU   none{f' ({res.gpu_note})' if res.gpu_note else ''}")
    if res.disk:
        print(f"disk  {format_bytes(res.disk.free_bytes)} free of "
              f"{format_bytes(res.disk.total_bytes)} at {res.disk.path}")
    return 0
