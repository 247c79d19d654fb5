"""Compatibility doctor: why a model will not load here, in sentences with the action to take.

Before anything loads, what the checkpoint declares (transformers version, model class,
model_type, quantization method, GGUF architecture, tensors) is compared with what is
installed and with what the architecture needs. Nothing is executed or unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import ModelyardError
from app.core.formats.model_info import ModelInfo
from app.core.formats.scan import inspect_path
from app.core.generate.findings import Finding, sorted_findings
from app.core.jobs import ProgressUnit, Reporter


@dataclass(frozen=True)
class DoctorReport:
    path: Path
    format: str
    architecture: str | None
    backend: str | None  # what `generate` would run it with; None when nothing can
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format,
                "architecture": self.architecture, "backend": self.backend, "ok": self.ok,
                "findings": [f.to_json() for f in self.findings]}


def _scan_findings(info: ModelInfo) -> list[Finding]:
    findings = []
    if info.format == "pickle":
        findings.append(Finding(
            "error", f"the weights are pickle files ({', '.join(p.name for p in info.files)}), "
                     "which Modelyard never unpickles: loading them can run arbitrary code",
            "use a safetensors version of the model, or convert it yourself only if you "
            "trust its source", "pickle-weights"))
    for problem in info.problems:
        if info.format == "pickle" and "pickle" in problem.text:
            continue
        findings.append(Finding("error" if problem.fatal else "warning", problem.text, None,
                                "scan-problem"))
    return findings


def _probe_device(use_gpu: bool) -> str:
    if not use_gpu:
        return "cpu"
    from app.core.resources import probe_gpus

    gpus, _ = probe_gpus()
    return f"cuda:{gpus[0].index}" if gpus else "cpu"


def _backend(info: ModelInfo) -> str | None:
    from app.core.generate.loader import choose_backend

    try:
        return choose_backend(info).name
    except ModelyardError:
        return None


def diagnose(model: str | Path | ModelInfo, *, trust_remote_code: bool = False,
             use_gpu: bool = True) -> DoctorReport:
    """Every finding for one model, errors first."""
    info = model if isinstance(model, ModelInfo) else inspect_path(model)
    findings = _scan_findings(info)
    if not info.fatal_problems:
        if info.format == "hf":
            from app.core.generate.doctor_hf import diagnose_hf

            findings += diagnose_hf(info, trust_remote_code=trust_remote_code,
                                    device=_probe_device(use_gpu))
        elif info.format == "gguf":
            from app.core.generate.doctor_gguf import diagnose_gguf

            findings += diagnose_gguf(info)
    return DoctorReport(info.path, info.format, info.architecture, _backend(info),
                        tuple(sorted_findings(findings)))


@dataclass(frozen=True)
class DoctorRequest:
    """Job: the compatibility doctor for one model (seconds; builds the model on `meta`)."""

    path: Path
    trust_remote_code: bool = False
    use_gpu: bool = True
    progress_unit: ProgressUnit = "items"

    @property
    def title(self) -> str:
        return f"Check {Path(self.path).name}"

    def run(self, reporter: Reporter) -> DoctorReport:
        reporter.progress(0, 1, "checking")
        report = diagnose(self.path, trust_remote_code=self.trust_remote_code,
                          use_gpu=self.use_gpu)
        reporter.progress(1, 1, "done")
        errors = sum(1 for f in report.findings if f.severity == "error")
        reporter.log("info", f"{len(report.findings)} finding(s), {errors} error(s)")
        return report
