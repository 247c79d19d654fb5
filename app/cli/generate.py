"""`generate`, `doctor` and `compare`: does a model load and talk, and how much did it lose."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli import add_command
from app.cli.options import cli_words
from app.cli.output import print_json
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.errors import word_option
from app.core.formats.model_info import format_bytes
from app.core.generate.compare import CompareRequest, CompareResult
from app.core.generate.compare_metrics import percent_floor
from app.core.generate.compare_severity import severity_legend
from app.core.generate.doctor import DoctorReport, DoctorRequest
from app.core.generate.request import GenerateRequest, GenerateResult
from app.core.jobs import LogLevel

BACKENDS = ("auto", "llama.cpp", "transformers")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="load dtype for transformers (default: the checkpoint's)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model's own Python code to run (only for sources you "
                             "trust)")
    parser.add_argument("--cpu", action="store_true", help="do not use any GPU")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--json-progress", action="store_true",
                        help="progress and log as JSON lines on stdout")


def register(commands: argparse._SubParsersAction) -> None:
    generate = add_command(commands, "generate")
    generate.add_argument("path", type=Path, metavar="PATH")
    generate.add_argument("--prompt", required=True, help="the user message")
    generate.add_argument("--system", help="a system message (with the chat template)")
    generate.add_argument("--raw", action="store_true",
                          help="use the prompt as written, without the chat template")
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0,
                          help="0 (default) is greedy; above 0 samples")
    generate.add_argument("--top-k", type=int, default=0, help="0 (default) is off")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, help="seed for sampling (default: random)")
    generate.add_argument("--backend", choices=BACKENDS, default="auto")
    generate.add_argument("--n-gpu-layers", type=int,
                          help="llama.cpp layers on the GPU (default: as many as fit)")
    _load_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    doctor = add_command(commands, "doctor")
    doctor.add_argument("path", type=Path, metavar="PATH")
    doctor.add_argument("--trust-remote-code", action="store_true",
                        help="build the architecture from the model's own code to check "
                             "its tensors")
    doctor.add_argument("--cpu", action="store_true", help="check for the CPU, not a GPU")
    doctor.add_argument("--json", action="store_true", help="one JSON document on stdout")
    doctor.set_defaults(handler=cmd_doctor)

    compare = add_command(
        commands, "compare",
        epilog="severity: " + "; ".join(f"{name}: {rule}" for name, rule in severity_legend()))
    compare.add_argument("reference", type=Path, metavar="REF")
    compare.add_argument("candidate", type=Path, metavar="CANDIDATE")
    compare.add_argument("--text", type=Path, metavar="FILE",
                         help="UTF-8 text to score (default: a bundled public-domain sample)")
    compare.add_argument("--window", type=int, default=512,
                         help="tokens per window for long texts (default 512)")
    compare.add_argument("--ref-backend", choices=BACKENDS, default="auto")
    compare.add_argument("--candidate-backend", choices=BACKENDS, default="auto")
    _load_arguments(compare)
    compare.set_defaults(handler=cmd_compare)


class StreamingReporter(ConsoleReporter):
    """A console reporter that ends the streamed reply's line before printing a log line."""

    open_line = False

    def write_text(self, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()
        self.open_line = not piece.endswith("\n")

    def end_text(self) -> None:
        if self.open_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.open_line = False

    def log(self, level: LogLevel, text: str) -> None:
        if not self.json_lines:
            self.end_text()
        super().log(level, text)


def _text_printer(args: argparse.Namespace,
                  reporter: StreamingReporter) -> Callable[[str], None] | None:
    if args.json:
        return None
    if args.json_progress:
        return lambda piece: print(json.dumps({"event": "text", "text": piece}), flush=True)
    return reporter.write_text


def cmd_generate(args: argparse.Namespace) -> int:
    reporter = StreamingReporter(json_lines=args.json_progress, verbose=args.verbose,
                                 unit="tokens")
    request = GenerateRequest(
        path=args.path, prompt=args.prompt, max_tokens=args.max_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        system=args.system, use_chat_template=not args.raw, backend=args.backend,
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, use_gpu=not args.cpu,
        n_gpu_layers=args.n_gpu_layers, on_text=_text_printer(args, reporter))
    result = run_in_console(request, reporter)
    reporter.end_text()
    if result.status != "done":
        return result.exit_code
    _show(result.value, args, print_generate_summary)
    return 0


def _show(value: Any, args: argparse.Namespace, print_text: Callable[[Any], None]) -> None:
    """`--json`: the result as one document; `--json-progress`: nothing more; else text."""
    if args.json:
        print_json(value.to_json())
    elif not args.json_progress:
        print_text(value)


def print_generate_summary(value: GenerateResult) -> None:
    vram = (f", VRAM {format_bytes(value.peak_vram_bytes)}"
            if value.peak_vram_bytes is not None else "")
    sys.stderr.write(
        f"{value.backend} on {value.device} · {value.prompt_format} · "
        f"{value.n_generated} tokens at {value.tokens_per_s:.1f} tokens/s (prompt "
        f"{value.n_prompt_tokens} at {value.prompt_tokens_per_s:.1f} tokens/s) · load "
        f"{value.load_s:.1f} s · peak RAM {format_bytes(value.peak_bytes)}{vram}\n")


def print_doctor_report(report: DoctorReport) -> None:
    runs = f"runs with {report.backend}" if report.backend else "no backend can run it"
    print(f"{report.path}: {report.format.upper()}, {report.architecture or 'unknown'}; {runs}")
    if not report.findings:
        print("  no problems found")
    for finding in report.findings:
        print(f"  {finding.severity}: {finding.text}")
        if finding.action:
            print(f"    → {word_option(finding.action, finding.option, cli_words)}")
        if len(finding.tensors) > 8:
            for name in finding.tensors:
                print(f"      {name}")


def cmd_doctor(args: argparse.Namespace) -> int:
    request = DoctorRequest(args.path, trust_remote_code=args.trust_remote_code,
                            use_gpu=not args.cpu)
    result = run_in_console(request, ConsoleReporter(verbose=args.verbose))
    if result.status != "done":
        return result.exit_code
    report: DoctorReport = result.value
    if args.json:
        print_json(report.to_json())
    else:
        print_doctor_report(report)
    return 0 if report.ok else 2


def print_compare_result(value: CompareResult) -> None:
    rows = [
        ("reference", f"{value.reference} ({value.ref_backend})"),
        ("candidate", f"{value.candidate} ({value.candidate_backend})"),
        ("perplexity", f"reference {value.ppl_ref:.3f}, candidate {value.ppl_candidate:.3f}"),
        ("KL divergence", f"mean {value.kl_mean:.6f}, 99th percentile {value.kl_p99:.6f}"),
        ("top-1 agreement", f"{percent_floor(value.top1_agreement)} %"),
        ("noise floor", f"KL {value.noise_floor:.0e} (reference in {value.reference_dtype}): "
                        "smaller differences cannot be resolved"),
        ("text", f"{value.n_tokens} scored tokens in {value.n_windows} window(s); "
                 f"{value.text_source}"),
        ("peak RAM", format_bytes(value.peak_bytes)),
    ]
    for key, text in rows:
        print(f"{key:<16} {text}")
    print(f"{'severity':<16} {value.severity}")
    for name, rule in severity_legend():
        print(f"{'':<16}   {name:<18} {rule}")
    for note in value.notes:
        print(f"note: {note}")
    print(value.verdict)


def cmd_compare(args: argparse.Namespace) -> int:
    request = CompareRequest(
        reference=args.reference, candidate=args.candidate, text_file=args.text,
        window_tokens=args.window, ref_backend=args.ref_backend,
        candidate_backend=args.candidate_backend, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, use_gpu=not args.cpu)
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose,
                               unit="tokens")
    result = run_in_console(request, reporter)
    if result.status != "done":
        return result.exit_code
    _show(result.value, args, print_compare_result)
    return 0
