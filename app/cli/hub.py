"""`hub search`, `hub files` and `hub download`: models on the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli import add_command
from app.cli.fit import target_machine
from app.cli.output import print_json, render_table
from app.cli.progress import ConsoleReporter, run_in_console
from app.core.errors import OptionError
from app.core.estimate.verdict import DEFAULT_CONTEXT
from app.core.formats.model_info import format_bytes, format_count
from app.core.hub.download import DownloadRequest, DownloadResult, RepoDownloadRequest
from app.core.hub.fit import RepoFilesRequest, RepoFit
from app.core.hub.references import HubReference, parse_hub_reference
from app.core.hub.search import LIBRARIES, SORT_KEYS, SearchQuery, search_models


def register(commands: argparse._SubParsersAction) -> None:
    hub = add_command(commands, "hub")
    actions = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    hub.set_defaults(handler=lambda _args: hub.error("choose an action: search, files or "
                                                         "download"))

    search = actions.add_parser("search", help="search models on the Hub")
    search.add_argument("query", nargs="?", default="", metavar="Q")
    search.add_argument("--author", help="only this user's or organisation's models")
    search.add_argument("--library", choices=LIBRARIES, help="only GGUF or transformers models")
    search.add_argument("--sort", choices=tuple(SORT_KEYS), default="downloads")
    search.add_argument("--limit", type=int, default=20, help="results per page (default 20)")
    search.add_argument("--page", type=int, default=1, help="page of results (default 1)")
    search.add_argument("--json", action="store_true", help="one JSON document on stdout")
    search.set_defaults(handler=cmd_search)

    files = actions.add_parser(
        "files", help="a repo's files: size, quant, architecture and fit of each GGUF")
    files.add_argument("repo", metavar="REPO", help="owner/repo or a Hub URL")
    files.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    files.add_argument("--ctx", type=int, default=DEFAULT_CONTEXT,
                       help=f"context length for the fit (default {DEFAULT_CONTEXT})")
    files.add_argument("--vram", type=float, default=None, metavar="GIB",
                       help="judge for a GPU with this much free VRAM")
    files.add_argument("--ram", type=float, default=None, metavar="GIB",
                       help="judge for this much free RAM")
    files.add_argument("--cpu-only", action="store_true", help="ignore this machine's GPUs")
    files.add_argument("--no-headers", action="store_true",
                       help="list files only; do not read GGUF headers or judge the fit")
    files.add_argument("--json", action="store_true", help="one JSON document on stdout")
    files.set_defaults(handler=cmd_files)

    download = actions.add_parser("download", help="download one file of a repo")
    download.add_argument("repo", metavar="REPO", help="owner/repo or a Hub URL")
    download.add_argument("file", nargs="*", default=[], metavar="FILE",
                          help="the files' paths in the repo (default: every file; or give a "
                               "file URL as REPO)")
    download.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                          help="folder to download into (default: the Hugging Face cache)")
    download.add_argument("--revision", default=None, help="branch, tag or commit")
    download.add_argument("--json", action="store_true", help="print the result as JSON")
    download.add_argument("--json-progress", action="store_true",
                          help="progress and log as JSON lines on stdout")
    download.set_defaults(handler=cmd_download)


def _reference(text: str) -> HubReference:
    from app.core.hub.client import hub_endpoint

    reference = parse_hub_reference(text, hub_endpoint())
    if reference is None:
        raise OptionError(f"{text!r} is not a Hub model (owner/repo or a Hub URL)")
    return reference


def cmd_search(args: argparse.Namespace) -> int:
    if args.page < 1:
        raise OptionError(f"--page must be 1 or more, not {args.page}")
    query = SearchQuery(args.query, args.author, args.library, args.sort, args.limit)
    page = search_models(query, args.page - 1)
    if args.json:
        print_json(page.to_json())
        return 0
    rows = [(m.repo_id, f"{m.downloads:,}", f"{m.likes:,}",
             m.last_modified.date().isoformat() if m.last_modified else "?",
             "+".join(k for k, has in (("GGUF", m.has_gguf), ("safetensors", m.has_safetensors))
                      if has) or "-", "gated" if m.gated else "")
            for m in page.models]
    print(render_table(("Model", "Downloads", "Likes", "Modified", "Weights", ""), rows,
                       right_align=(1, 2)) if rows else "no models found")
    if page.has_more:
        print(f"more results: --page {args.page + 1}")
    return 0


def cmd_files(args: argparse.Namespace) -> int:
    reference = _reference(args.repo)
    if args.ctx <= 0:
        raise OptionError(f"--ctx must be positive, not {args.ctx}")
    target = target_machine(args.vram, args.ram, args.cpu_only)
    request = RepoFilesRequest(reference.repo_id, target, args.ctx,
                               args.revision or reference.revision,
                               read_headers=not args.no_headers)
    result = run_in_console(request, ConsoleReporter(verbose=args.verbose, unit="files"))
    if result.status != "done":
        return result.exit_code
    fit: RepoFit = result.value
    if args.json:
        print_json(fit.to_json())
    else:
        print_repo(fit, headers_read=not args.no_headers)
    return 0


def print_repo(fit: RepoFit, headers_read: bool = True) -> None:
    listing = fit.listing
    print(f"{listing.repo_id} at {listing.revision[:12]}: {len(listing.files)} files, "
          f"{format_bytes(listing.total_size)}{' (gated)' if listing.gated else ''}")
    if fit.files:
        print()
        rows = [("*" if f.recommended else "", f.entry.label, f.entry.quant or "?",
                 format_bytes(f.entry.size), f.architecture or "?",
                 f.verdict.text.split(":")[0] if headers_read else "")
                for f in fit.files]
        print(render_table(("", "GGUF", "Quant", "Size", "Arch", "Fit"), rows,
                           right_align=(3,)))
        print(f"fit judged at {fit.context} tokens on {fit.target.name}")
        unknown = [f for f in fit.files if f.verdict.kind == "unknown" and headers_read]
        if unknown:
            print(f"  {unknown[0].entry.label}: {unknown[0].verdict.text}")
    if listing.safetensors is not None:
        summary = listing.safetensors
        params = format_count(summary.parameters) if summary.parameters else "?"
        print(f"\nsafetensors: {len(summary.files)} file(s), "
              f"{format_bytes(summary.total_size)}, {params} parameters "
              f"({', '.join(f'{k} {format_count(v)}' for k, v in summary.dtypes.items())})")
        report = fit.safetensors_report
        if report is not None:
            print(f"  in transformers: {report.verdict.text}")
            best = report.recommended
            if best is not None:
                print(f"  as GGUF: {best.candidate.label} recommended "
                      f"({format_bytes(best.candidate.model.file_size)}, "
                      f"{best.verdict.text.split(':')[0]})")
        elif fit.safetensors_note:
            print(f"  fit not judged: {fit.safetensors_note}")
    recommended = fit.recommended
    if recommended is not None:
        print(f"\nrecommended: {recommended.entry.label}")
    if fit.original_note:
        print(fit.original_note)
    print()
    print(render_table(("File", "Size"), [(f.name, format_bytes(f.size or 0))
                                          for f in listing.files], right_align=(1,)))


def cmd_download(args: argparse.Namespace) -> int:
    reference = _reference(args.repo)
    files = tuple(args.file) or ((reference.filename,) if reference.filename else ())
    revision = args.revision or reference.revision or "main"
    request: DownloadRequest | RepoDownloadRequest
    if len(files) == 1:
        request = DownloadRequest(reference.repo_id, files[0], revision, output_dir=args.output)
    else:
        request = RepoDownloadRequest(reference.repo_id, files, revision, output_dir=args.output)
    reporter = ConsoleReporter(json_lines=args.json_progress, verbose=args.verbose,
                               unit="bytes")
    result = run_in_console(request, reporter)
    if result.status != "done":
        return result.exit_code
    done: list[DownloadResult] = result.value if isinstance(result.value, list) \
        else [result.value]
    if args.json:
        print_json(done[0].to_json() if len(files) == 1 else [d.to_json() for d in done])
    elif not args.json_progress:
        for item in done:
            print(item.path)
    return 0
