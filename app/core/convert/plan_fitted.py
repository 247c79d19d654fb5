"""A planned program fitted to a size target, as a job of its own: choosing the types means
quantizing samples of every weight (torch), so a window that must not load torch has it done
in the job's process and shows the fitted program before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from app.core.convert.job import ConvertRequest
from app.core.convert.plan import ConversionPlan
from app.core.jobs import ProgressUnit, Reporter


@dataclass(frozen=True)
class FitToSizeRequest:
    """Job: `plan` (the request's checked program) with its weights retyped to fit the
    request's size target or GPU; the result is the fitted program, nothing is written."""

    request: ConvertRequest
    plan: ConversionPlan
    progress_unit: ProgressUnit = "items"
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return f"Fit {Path(self.request.source).name} to a size"

    def run(self, reporter: Reporter) -> ConversionPlan:
        return self.request.fit_to_size(self.plan, reporter)
