"""`fit`: will a model load or convert here, and which quant fits best."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from app.cli import add_command
from app.cli.output import print_json, render_table
from app.core.errors import FormatError, OptionError
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import FitReport, convert_estimate, fit_report
from app.core.estimate.verdict import DEFAULT_CONTEXT, Machine
from app.core.formats.gguf_model import quant_siblings
from app.core.formats.model_info import ModelInfo, format_bytes
from app.core.formats.scan import inspect_path, scan_paths
from app.core.resources import probe_resources


def register(commands: argparse._SubParsersAction) -> None:
    fit = add_command(commands, "fit")
    fit.add_argument("path", type=Path, metavar="PATH",
                     help="a GGUF file, a model folder, or a folder of GGUF quants")
    fit.add_argument("--ctx", type=int, default=DEFAULT_CONTEXT,
                     help=f"context length in tokens (default {DEFAULT_CONTEXT})")
    fit.add_argument("--gpu-layers", type=int, default=None,
                     help="layers to offload (default: as many as fit)")
    fit.add_argument("--vram", type=float, default=None, metavar="GIB",
                     help="judge for a GPU with this much free VRAM instead of this machine's")
    fit.add_argument("--ram", type=float, default=None, metavar="GIB",
                     help="judge for this much free RAM instead of this machine's")
    fit.add_argument("--cpu-only", action="store_true", help="ignore this machine's GPUs")
    fit.add_argument("--cache-type", default="F16", help="llama.cpp KV cache type (F16, Q8_0…)")
    fit.add_argument("--flash-attn", action="store_true", help="llama.cpp flash attention on")
    fit.add_argument("--json", action="store_true", help="one JSON document on stdout")
    fit.set_defaults(handler=cmd_fit)


def target_machine(vram: float | None = None, ram: float | None = None, cpu_only: bool = False,
                   disk_path: Path | None = None) -> Machine:
    """The machine `--vram`, `--ram` and `--cpu-only` (GiB, or None for this machine's)
    describe: this one, or a custom one; a nonsense value is refused (exit 2)."""
    resources = probe_resources(disk_path)
    if vram is not None or ram is not None:
        if cpu_only and vram is not None:
            raise OptionError("--cpu-only and --vram contradict each other")
        custom = Machine.custom(vram, ram, resources)
        return Machine(custom.name, custom.ram_bytes, () if cpu_only else custom.gpu_free)
    return Machine.from_resources(resources, cpu_only=cpu_only)


def _primary_and_siblings(path: Path) -> tuple[ModelInfo, list[ModelInfo]]:
    """The model at `path` and the other quants of it beside it (or in the folder)."""
    if path.is_dir():
        found = scan_paths([path]).models
        ggufs = [m for m in found if m.format == "gguf"]
        direct = [m for m in found if m.path == path]
        if direct:
            return direct[0], []
        if not ggufs:
            return inspect_path(path), []  # raises the clear "not a model" error
        return ggufs[0], ggufs
    model = inspect_path(path)
    neighbours = scan_paths([model.path.parent]).models if model.format == "gguf" else ()
    return model, quant_siblings(model, neighbours)


def cmd_fit(args: argparse.Namespace) -> int:
    if args.ctx <= 0:
        raise OptionError(f"--ctx must be positive, not {args.ctx}")
    model, siblings = _primary_and_siblings(args.path)
    if model.fatal_problems:
        # A corrupt or truncated file has no meaningful estimate: say what the reader found.
        raise FormatError(model.fatal_problems[0].text, path=model.path)
    target = target_machine(args.vram, args.ram, args.cpu_only,
                            args.path if args.path.exists() else None)
    report = fit_report(model, target, args.ctx, args.gpu_layers, siblings,
                        conversions=conversion_candidates(model),
                        cache_type=args.cache_type, flash_attention=args.flash_attn)
    recommended = report.recommended
    if recommended is not None and not recommended.candidate.existing:
        job, note = convert_estimate(model, recommended.candidate.quant)
        report = replace(report, convert=job, notes=report.notes + ((note,) if note else ()))
    if args.json:
        print_json(report.to_json())
    else:
        print_report(report)
    return 0


def _gib(n_bytes: int) -> str:
    return format_bytes(n_bytes)


def print_report(report: FitReport) -> None:
    target = report.target
    gpus = ", ".join(_gib(v) for v in target.usable_vram) or "no GPU"
    print(f"{report.model.name} at {report.context} tokens on {target.name} "
          f"(usable: {_gib(target.usable_ram)} RAM, {gpus})")
    print(f"  verdict: {report.verdict.text}")
    estimate = report.verdict.estimate
    if estimate is not None:
        rows = [("RAM", _gib(estimate.ram.weights), _gib(estimate.ram.kv_cache),
                 _gib(estimate.ram.compute), _gib(estimate.ram.overhead),
                 _gib(estimate.ram.total))]
        rows += [(f"GPU {i}", _gib(v.weights), _gib(v.kv_cache), _gib(v.compute),
                  _gib(v.overhead), _gib(v.total)) for i, v in enumerate(estimate.vram)
                 if v.total]
        print(render_table(("Device", "Weights", "KV cache", "Compute", "Overhead", "Total"),
                           rows, right_align=(1, 2, 3, 4, 5)))
        for note in estimate.approximate:
            print(f"  approximate: {note}")
    if report.candidates:
        print()
        rows = [("*" if c.recommended else "", c.candidate.label, c.candidate.quant,
                 _gib(c.candidate.model.file_size), c.verdict.text.split(":")[0],
                 "" if c.candidate.writable else "estimate only")
                for c in report.candidates]
        print(render_table(("", "Quant", "Type", "Size", "Verdict", ""), rows,
                           right_align=(3,)))
    recommended = report.recommended
    if recommended is not None:
        print(f"recommended: {recommended.candidate.label}")
    offer = report.size_offer
    if offer is not None:
        print(f"{offer.text} ({offer.verdict.text.split(':')[0]}): convert --type "
              f"{offer.preferred} --target-size {offer.size_text}")
    if report.max_context:
        print(f"longest context at which {report.max_context_of} fully fits: "
              f"{report.max_context} tokens")
    if report.convert is not None:
        memory = "VRAM" if report.convert.device == "cuda" else "RAM"
        print(f"converting to {recommended.candidate.quant if recommended else '?'}: peak "
              f"{_gib(report.convert.peak_bytes)} {memory} (loading everything would need "
              f"{_gib(report.convert.naive_peak_bytes)}), output "
              f"{_gib(report.convert.output_bytes)}")
    for note in report.notes:
        print(f"note: {note}")
