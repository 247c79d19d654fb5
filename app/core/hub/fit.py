"""Fit verdicts for a Hub repo's GGUF files from their remote headers, before downloading.

The verdicts and the recommendation come from `estimate.report.fit_report`, the same code
`modelyard fit` runs on files on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.errors import ModelyardError
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import FitReport, fit_report
from app.core.estimate.verdict import DEFAULT_CONTEXT, Machine, Verdict, judge
from app.core.formats.model_info import ModelInfo
from app.core.hub.errors import HubUnavailableError
from app.core.hub.remote_header import describe_remote_gguf
from app.core.hub.remote_hf import describe_remote_hf
from app.core.hub.repo_files import GGUFEntry, RepoListing, list_repo
from app.core.jobs import NullReporter, ProgressUnit, Reporter, check_cancel

ORIGINAL_NOTE = ("converting from the original avoids stacking two quantization errors")


@dataclass(frozen=True)
class FileFit:
    entry: GGUFEntry
    model: ModelInfo | None  # from the remote header; None when it could not be read
    verdict: Verdict
    recommended: bool = False

    @property
    def architecture(self) -> str | None:
        return self.model.architecture if self.model else None

    def to_json(self) -> dict[str, Any]:
        model = self.model
        return {**self.entry.to_json(), "architecture": self.architecture,
                "header_quant": model.quantization if model else None,
                "n_layers": model.n_layers if model else None,
                "context_length": model.context_length if model else None,
                "parameters": model.parameters if model else None,
                "tensor_types": model.tensor_types if model else None,
                "recommended": self.recommended, **self.verdict.to_json()}


@dataclass(frozen=True)
class RepoFit:
    listing: RepoListing
    files: tuple[FileFit, ...]
    context: int
    target: Machine
    report: FitReport | None = None
    # The safetensors model: loaded in transformers, and as each GGUF it could become.
    safetensors_report: FitReport | None = None
    safetensors_note: str | None = None  # why there is no safetensors report

    @property
    def recommended(self) -> FileFit | None:
        return next((f for f in self.files if f.recommended), None)

    @property
    def original_note(self) -> str | None:
        """For a quantized repo whose card names its original: why to consider that."""
        if self.listing.quantized and self.listing.base_models:
            return f"original: {', '.join(self.listing.base_models)} ({ORIGINAL_NOTE})"
        return None

    def to_json(self) -> dict[str, Any]:
        recommended = self.recommended
        return {**self.listing.to_json(), "context": self.context,
                "target": {"name": self.target.name, "ram_bytes": self.target.ram_bytes,
                           "gpu_free_bytes": list(self.target.gpu_free)},
                "gguf_fits": [f.to_json() for f in self.files],
                "recommended": recommended.entry.label if recommended else None,
                "original_note": self.original_note,
                "safetensors_fit": (self.safetensors_report.to_json()
                                    if self.safetensors_report else None),
                "safetensors_note": self.safetensors_note}


def _unknown(reason: str) -> Verdict:
    return Verdict("unknown", f"unknown: {reason}", None)


def fit_listing(listing: RepoListing, target: Machine, context: int = DEFAULT_CONTEXT,
                reporter: Reporter | None = None) -> RepoFit:
    """Read every GGUF entry's header remotely and judge it on `target`."""
    reporter = reporter or NullReporter()
    sizes = {f.name: f.size for f in listing.files if f.size is not None}
    described: list[tuple[GGUFEntry, ModelInfo | None, str | None]] = []
    for index, entry in enumerate(listing.ggufs):
        check_cancel(reporter)
        reporter.progress(index, len(listing.ggufs), f"reading the header of {entry.label}")
        try:
            model = describe_remote_gguf(listing.repo_id, entry, listing.ref, sizes,
                                         reporter)
        except HubUnavailableError:
            raise  # offline or unreachable: no entry can be judged, say so once
        except ModelyardError as exc:
            described.append((entry, None, exc.message))
            continue
        described.append((entry, model, None))
    reporter.progress(len(listing.ggufs), len(listing.ggufs), "judging")
    models = [m for _, m, _ in described if m is not None]
    report = None
    by_path: dict[str, Any] = {}
    if models:
        report = fit_report(models[0], target, context, siblings=models)
        by_path = {str(c.candidate.model.path): c for c in report.candidates}
    files = []
    for entry, model, error in described:
        if model is None:
            files.append(FileFit(entry, None, _unknown(error or "header not read")))
            continue
        candidate = by_path.get(str(model.path))
        if candidate is not None:
            files.append(FileFit(entry, model, candidate.verdict, candidate.recommended))
        else:
            try:
                verdict = judge(model, target, context)
            except ModelyardError as exc:
                verdict = _unknown(exc.reason)
            files.append(FileFit(entry, model, verdict))
    hf_report, hf_note = _safetensors_fit(listing, target, context)
    return RepoFit(listing, tuple(files), context, target, report, hf_report, hf_note)


def _safetensors_fit(listing: RepoListing, target: Machine,
                     context: int) -> tuple[FitReport | None, str | None]:
    if listing.safetensors is None:
        return None, None
    try:
        model = describe_remote_hf(listing)
        if model is None:
            return None, None
        return fit_report(model, target, context,
                          conversions=conversion_candidates(model)), None
    except HubUnavailableError:
        raise
    except ModelyardError as exc:
        return None, exc.message


@dataclass(frozen=True)
class RepoFilesRequest:
    """Job: list a Hub repo's files and judge each GGUF on `target` from its remote header."""

    repo_id: str
    target: Machine
    context: int = DEFAULT_CONTEXT
    revision: str | None = None
    read_headers: bool = True
    progress_unit: ProgressUnit = "items"

    @property
    def title(self) -> str:
        return f"Files of {self.repo_id}"

    def run(self, reporter: Reporter) -> RepoFit:
        listing = list_repo(self.repo_id, self.revision, reporter)
        if not self.read_headers:
            return RepoFit(listing, tuple(FileFit(e, None, _unknown("header not read"))
                                          for e in listing.ggufs), self.context, self.target)
        return fit_listing(listing, self.target, self.context, reporter)
