"""The Fit tab offers the size-target mix when Q4_K_M does not fit, and its button opens the
convert sheet with that size, the fitted plan measured and shown before anything is written."""

from __future__ import annotations

import math
from pathlib import Path

from gui_helpers import open_window, settle
from PySide6.QtWidgets import QApplication
from test_screenshots import problems_in, save

from app.core.convert.plan_fitted import FitToSizeRequest
from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import fit_report
from app.core.estimate.verdict import MARGIN_BYTES, MARGIN_FRACTION, Machine, judge
from app.core.formats.model_info import format_bytes
from app.core.formats.scan import inspect_path
from app.gui.convert_dialog import ConvertDialog
from app.gui.settings import AppSettings
from factories import make_gguf

CONTEXT = 512


def test_the_fit_tab_offers_a_custom_mix_and_the_sheet_fits_it(
        qtbot, settings: AppSettings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "models"
    folder.mkdir()
    path = make_gguf(folder / "m.gguf", n_layers=4, n_embd=256, n_ff=512, n_vocab=512)
    model = inspect_path(path)
    candidates = conversion_candidates(model)
    by_quant = {c.quant: c for c in candidates}
    big = Machine("big", 64 * 2**30)
    q3, q4_0 = (judge(by_quant[q].model, big, CONTEXT).estimate.ram.total
                for q in ("Q3_K_L", "Q4_0"))
    need = (q3 + 4 * q4_0) // 5
    target = Machine("small", math.ceil((need + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1)
    report = fit_report(model, target, CONTEXT, conversions=candidates)
    offer = report.size_offer
    assert offer is not None

    window = open_window(qtbot, settings, folder)
    assert window.select_model_path(path)
    settle(qtbot, window)
    tab = window.details.fit
    assert tab.report is not None and tab.report.size_offer is None  # Q4_K_M fits here
    assert tab.offer.isHidden() and tab.offer_action.isHidden()
    tab.show_report(report)
    assert tab.offer.text().startswith(f"<b>{offer.text}</b>")
    assert "Q4_K_M does not fit" in tab.offer.text() and "Q3_K_L" in tab.offer.text()
    assert not tab.offer_action.isHidden()
    assert format_bytes(offer.size_bytes) in tab.offer_action.text()
    window.resize(1024, 640)
    window.details.setCurrentWidget(tab)
    qtbot.wait(30)
    save(window, "fit-size-offer", tmp_path, (1024, 640))
    assert problems_in(tab) == []
    tab.offer_action.click()
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, ConvertDialog) and w.isVisible())
    # The sheet opens on Q4_K_M with the size target, and measures the fitted plan in a job
    # (the fitted plan itself is shown as test_convert_advanced checks).
    qtbot.waitUntil(lambda: any(isinstance(r.request, FitToSizeRequest)
                                for r in window.queue.jobs.values()), timeout=60000)
    assert dialog.selected_type() == "Q4_K_M"
    assert dialog.advanced.isVisibleTo(dialog) and dialog.advanced.currentWidget() is dialog.sizing
    job = next(r for r in window.queue.jobs.values() if isinstance(r.request, FitToSizeRequest))
    assert job.request.request.target_size == offer.size_bytes
    assert job.request.request.out_type == "Q4_K_M"
    assert "Measuring" in dialog.summary.text() and not dialog.start.isEnabled()
    dialog.reject()  # closing the sheet stops the measurement
    settle(qtbot, window)
    assert job.state == "cancelled"
    assert not any(folder.glob("*Q4_K_M*"))  # nothing written
