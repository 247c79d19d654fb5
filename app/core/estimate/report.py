"""One answer to "will it fit?" for a model: its verdict, the quants it exists in or could be
converted to (each with a verdict), the recommended one and the longest context that fits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import ModelyardError
from app.core.estimate.candidates import keep_candidate
from app.core.estimate.originals import hub_original, is_quantized
from app.core.estimate.size_offer import SizeOffer, size_offer
from app.core.estimate.verdict import (
    DEFAULT_CONTEXT,
    Candidate,
    CandidateFit,
    Machine,
    Verdict,
    fully_fits,
    judge,
    max_context,
    recommend,
)
from app.core.formats.model_info import ModelInfo


@dataclass(frozen=True)
class JobEstimate:
    """Peak memory of Modelyard's own streaming job, and of the load-everything approach."""

    peak_bytes: int
    naive_peak_bytes: int
    output_bytes: int
    device: str = "cpu"


@dataclass(frozen=True)
class FitReport:
    model: ModelInfo
    target: Machine
    context: int
    verdict: Verdict
    candidates: tuple[CandidateFit, ...] = ()
    max_context: int | None = None
    max_context_of: str | None = None  # which candidate (or the model) max_context is for
    convert: JobEstimate | None = None
    notes: tuple[str, ...] = field(default=())
    # When the preferred standard mix does not fit: the custom mix (a size target) that does.
    size_offer: SizeOffer | None = None

    @property
    def recommended(self) -> CandidateFit | None:
        return next((c for c in self.candidates if c.recommended), None)

    def to_json(self) -> dict[str, Any]:
        recommended = self.recommended
        data: dict[str, Any] = {
            "model": {"name": self.model.name, "path": str(self.model.path),
                      "format": self.model.format, "quantization": self.model.quantization},
            "target": {"name": self.target.name, "ram_bytes": self.target.ram_bytes,
                       "usable_ram_bytes": self.target.usable_ram,
                       "gpu_free_bytes": list(self.target.gpu_free),
                       "usable_vram_bytes": list(self.target.usable_vram)},
            **self.verdict.to_json(),
            "context": self.context,
            "recommended_type": recommended.candidate.quant if recommended else None,
            "recommended_label": recommended.candidate.label if recommended else None,
            "max_context": self.max_context,
            "max_context_of": self.max_context_of,
            "candidates": [_candidate_json(c) for c in self.candidates],
            "notes": list(self.notes),
            "size_offer": self.size_offer.to_json() if self.size_offer else None,
        }
        if self.convert is not None:
            data["convert_peak_bytes"] = self.convert.peak_bytes
            data["convert_naive_peak_bytes"] = self.convert.naive_peak_bytes
            data["convert_device"] = self.convert.device
        return data


def _candidate_json(fit: CandidateFit) -> dict[str, Any]:
    return {"label": fit.candidate.label, "quant": fit.candidate.quant,
            "size_bytes": fit.candidate.model.file_size, "existing": fit.candidate.existing,
            "writable": fit.candidate.writable, "recommended": fit.recommended,
            **fit.verdict.to_json()}


def existing_candidates(models: Sequence[ModelInfo]) -> list[Candidate]:
    """GGUF files of one model in several quants (a folder or Hub repo of quants)."""
    return [Candidate(m.name, m.quantization or "?", m, writable=True, existing=True)
            for m in models if m.format == "gguf" and not m.fatal_problems]


def fit_report(model: ModelInfo, target: Machine, context: int = DEFAULT_CONTEXT,
               gpu_layers: int | None = None, siblings: Sequence[ModelInfo] = (),
               conversions: Sequence[Candidate] = (), convert: JobEstimate | None = None,
               originals: Sequence[ModelInfo] = (), **options: Any) -> FitReport:
    """Everything the fit panel and `modelyard fit` show for one model: `siblings` are other
    files of the same model, `conversions` the GGUFs Modelyard could write from it (the file
    as it is among them), `originals` local unquantized folders of the same model."""
    verdict = judge(model, target, context, gpu_layers, **options)
    keep = [c for c in conversions if c.keep]
    if not keep and model.format == "gguf" and not model.fatal_problems:
        keep = [keep_candidate(model)]
    # Bigger types than a quantized source bring no quality back and never help it fit.
    others = [c for c in conversions if not c.keep and not c.upward]
    candidates = keep + existing_candidates([s for s in siblings if s.path != model.path]) \
        + others
    fits = tuple(recommend(candidates, target, context, **options)) if candidates else ()
    recommended = next((f for f in fits if f.recommended), None)
    best_model = recommended.candidate.model if recommended else model
    longest = max_context(best_model, target, **options) if verdict.kind != "unknown" else None
    notes = []
    if fits and all(f.verdict.kind == "none" for f in fits):
        notes.append("nothing fits this target, not even the smallest type; try a shorter "
                     "context")
    elif recommended is not None and not fully_fits(recommended.verdict, target):
        notes.append(f"nothing fits entirely on the GPU; {recommended.candidate.label} "
                     f"{recommended.verdict.text.split(':')[0]}")
    if recommended is not None and recommended.candidate.requantizes:
        notes.append(f"{model.name} does not fit as it is; {recommended.candidate.quant} "
                     f"does, but quantizing its {model.quantization} weights again stacks a "
                     "second quantization error on the first")
    if is_quantized(model):
        notes += _original_notes(model, originals)
    of = model.name if recommended is None or recommended.candidate.keep \
        else recommended.candidate.label
    offer = size_offer(fits, target, context, **options) if fits else None
    return FitReport(model, target, context, verdict, fits, longest, of, convert, tuple(notes),
                     offer)


def _original_notes(model: ModelInfo, originals: Sequence[ModelInfo]) -> list[str]:
    """Point at the unquantized original: converting from it adds one error, not two."""
    hub = hub_original(model)
    where = [f"the local HF folder {o.name} ({o.path})" for o in originals]
    if hub:
        where.append(f"the Hub repo {hub}")
    if not where:
        return []
    return [f"{' or '.join(where)} holds the original weights of this {model.quantization} "
            "file: convert from there rather than from this file"]


def convert_estimate(model: ModelInfo, out_type: str | None) -> tuple[JobEstimate | None,
                                                                      str | None]:
    """Peak memory and output size of Modelyard converting `model` to `out_type` (HF → GGUF or
    GGUF → GGUF), from the converter's own plan; or why there is none."""
    if model.format not in ("hf", "gguf") or model.fatal_problems:
        return None, None
    from app.core.convert import plan_conversion

    try:
        plan = plan_conversion(model, out_type=out_type or "F16", overwrite=True, device="auto")
    except ModelyardError as exc:
        return None, f"no conversion estimate: {exc.message}"
    return JobEstimate(plan.estimated_peak_bytes, plan.naive_peak_bytes, plan.output_bytes,
                       plan.device), None


def verdicts_for(models: Sequence[ModelInfo], target: Machine,
                 context: int = DEFAULT_CONTEXT) -> dict[str, Verdict]:
    """A verdict per model path, for a table; a model that cannot be judged says why."""
    verdicts: dict[str, Verdict] = {}
    for model in models:
        try:
            verdicts[str(model.path)] = judge(model, target, context)
        except ModelyardError as exc:
            verdicts[str(model.path)] = Verdict("unknown", f"unknown: {exc.message}", None)
    return verdicts
