"""Keeps the Fit column and the Fit tab current: estimates run in the background whenever the
models, the selection, the target or the context change."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QObject

from app.core.estimate.originals import local_originals
from app.core.estimate.report import FitReport, fit_report, verdicts_for
from app.core.estimate.verdict import Candidate, Machine
from app.core.formats.gguf_model import quant_siblings
from app.core.formats.model_info import ModelInfo
from app.core.resources import probe_resources
from app.gui.background import Background
from app.gui.fit_tab import FitTab, TargetSpec
from app.gui.models_table import ModelTableModel
from app.gui.settings import AppSettings

# Conversions a model could be turned into; the converter provides them once it is wired in.
ConversionCandidates = Callable[[ModelInfo], Sequence[Candidate]]


def make_target(spec: TargetSpec) -> Machine:
    if spec.kind == "custom":
        return Machine.custom(spec.vram_gib, spec.ram_gib)
    return Machine.from_resources(probe_resources(), cpu_only=spec.kind == "cpu")


class FitController(QObject):
    def __init__(self, table: ModelTableModel, tab: FitTab, background: Background,
                 settings: AppSettings, conversions: ConversionCandidates | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.table, self.tab, self.background, self.settings = table, tab, background, settings
        self.conversions = conversions
        # A "what if" target is a question about one model, not a setting: every start judges
        # for this machine again (the custom amounts are kept to save retyping them).
        _kind, vram, ram, context = settings.fit_parameters()
        self.spec = TargetSpec("machine", vram, ram)
        self.context = context
        self.model: ModelInfo | None = None
        tab.set_parameters(self.spec, context)
        tab.parameters_changed.connect(self._parameters_changed)

    def _parameters_changed(self, spec: TargetSpec, context: int) -> None:
        self.spec, self.context = spec, context
        self.settings.set_fit_parameters("machine", spec.vram_gib, spec.ram_gib, context)
        self.refresh_table()
        self.refresh_report()

    def table_spec(self) -> TargetSpec:
        """What the models table is judged for: this machine, unless the user asked the Fit
        tab to judge the table for its target too."""
        return self.spec if self.tab.judge_table.isChecked() else TargetSpec(
            "machine", self.spec.vram_gib, self.spec.ram_gib)

    def context_text(self) -> str:
        return f"at {self.context:,} tokens on {self.table_spec().label()}"

    def refresh_table(self) -> None:
        models = self.table.models()
        spec, context = self.table_spec(), self.context
        text, judge = self.context_text(), spec.short_label()
        self.background.submit(
            "table-fits", lambda: verdicts_for(models, make_target(spec), context),
            lambda fits: self.table.set_fits(fits, text, judge))

    def show_model(self, model: ModelInfo | None) -> None:
        self.model = model
        self.refresh_report()

    def refresh_report(self) -> None:
        model = self.model
        if model is None:
            self.tab.show_report(None)
            return
        models = self.table.models()
        siblings = quant_siblings(model, models)
        conversions = self.conversions
        spec, context = self.spec, self.context

        def compute() -> FitReport:
            extra = list(conversions(model)) if conversions else []
            return fit_report(model, make_target(spec), context, siblings=siblings,
                              conversions=extra, originals=local_originals(model, models))

        self.tab.show_pending()
        self.background.submit("fit-report", compute, self._show_report,
                               lambda error: self.tab.show_error(str(error)))

    def _show_report(self, report: FitReport) -> None:
        if self.model is not None and report.model.path == self.model.path:
            self.tab.show_report(report)
