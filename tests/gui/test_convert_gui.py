"""Converting from the window: the sheet, the one-click quant, drag and drop, the result."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication

from app.gui.convert_dialog import ConvertDialog
from app.gui.main_window import MainWindow
from app.gui.settings import AppSettings


@pytest.fixture()
def window(qtbot, settings: AppSettings, tmp_path: Path,  # type: ignore[no-untyped-def]
           tiny_models: dict[str, Path]) -> MainWindow:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_models["llama"], folder / "tiny-llama")
    return open_window(qtbot, settings, folder)



def open_dialog() -> ConvertDialog | None:
    return next((w for w in QApplication.topLevelWidgets()
                 if isinstance(w, ConvertDialog) and w.isVisible()), None)


def test_sheet_converts_and_the_result_is_offered_for_testing(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama")
    assert window.convert_action.isEnabled()
    window.convert_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    settle(qtbot, window)
    labels = [b.text() for b in dialog.types.buttons()]
    assert any(label.startswith("★") for label in labels)  # the recommended quant is marked
    q8 = next(b for b in dialog.types.buttons() if b.property("quant") == "Q8_0")
    q8.click()
    settle(qtbot, window)
    assert dialog.output.text() == str(folder / "tiny-llama-Q8_0.gguf")
    assert "Writes" in dialog.summary.text() and "peak" in dialog.summary.text()
    assert dialog.start.isEnabled()
    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)  # the conversion, then the rescan that lists its output
    assert (folder / "tiny-llama-Q8_0.gguf").is_file()
    selected = window.selected_model()
    assert selected is not None and selected.name == "tiny-llama-Q8_0"
    assert window.details.currentWidget() is window.details.test
    assert window.details.test.compare.reference.currentData() == str(folder / "tiny-llama")


def test_the_sheet_plans_once_and_the_job_runs_that_program(
        qtbot, window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.convert import ConvertRequest

    plans: list[str] = []
    real_plan = ConvertRequest.plan

    def counted(self: ConvertRequest) -> object:
        plans.append(self.out_type)
        return real_plan(self)

    monkeypatch.setattr(ConvertRequest, "plan", counted)
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama")
    window.convert_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    settle(qtbot, window)
    read = len(plans)
    assert 1 <= read <= 2  # the first request (and one racing it) read the source
    for quant in ("Q4_0", "F16", "Q8_0"):  # other types: the same program, retyped
        next(b for b in dialog.types.buttons() if b.property("quant") == quant).click()
        settle(qtbot, window)
        assert "Writes" in dialog.summary.text()
    assert len(plans) == read
    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)
    assert (folder / "tiny-llama-Q8_0.gguf").is_file()
    assert len(plans) == read  # neither accepting nor the job planned again


def test_one_click_from_the_fit_tab(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    window.sources.select("all")
    assert window.select_model_path(folder / "tiny-llama")
    settle(qtbot, window)
    tab = window.details.fit
    item = next(tab.quants.topLevelItem(i) for i in range(tab.quants.topLevelItemCount())
                if tab.quants.topLevelItem(i).text(1) == "Q4_0 (convert)")
    tab.quants.setCurrentItem(item)
    assert tab.action.text() == "Convert to Q4_0" and tab.action.isEnabled()
    tab.action.click()
    settle(qtbot, window)
    # the sheet opens on that type, so the output's name and place are seen before writing
    dialog = open_dialog()
    assert dialog is not None and dialog.selected_type() == "Q4_0"
    assert not (folder / "tiny-llama-Q4_0.gguf").exists()
    settle(qtbot, window)
    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)
    assert (folder / "tiny-llama-Q4_0.gguf").is_file()
    # the user's view is kept (all models), the new model selected in it
    assert window.proxy.source() is None
    assert window.selected_model().name == "tiny-llama-Q4_0"
    record = next(r for r in window.queue.jobs.values() if r.title.startswith("Convert"))
    item = window.jobs_panel._items[record.job_id]
    assert item.text(4).startswith("done in") and "tiny-llama-Q4_0.gguf" in item.text(4)


def test_dropping_a_model_opens_the_sheet(qtbot, window: MainWindow, tmp_path: Path,
                                          tiny_ggufs: dict[str, Path]) -> None:
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    dropped = shutil.copy(tiny_ggufs["dense"], elsewhere / "dense.gguf")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(dropped))])
    window.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime,
                                Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    settle(qtbot, window)
    dialog = open_dialog()
    assert dialog is not None and dialog.model.path == Path(dropped)
    assert elsewhere in window.settings.folders()
    assert dialog.to_hf.isEnabled()  # a GGUF can also go back to safetensors
    dialog.to_hf.setChecked(True)
    settle(qtbot, window)
    assert [b.property("quant") for b in dialog.types.buttons()] == ["BF16", "F16", "F32"]
    assert dialog.output.text().endswith("-hf")
    dialog.reject()


def test_the_sheet_judges_fit_for_this_machine_not_the_what_if_target(
        qtbot, window: MainWindow) -> None:
    from app.core.estimate.candidates import conversion_candidates
    from app.core.estimate.verdict import recommend
    from app.gui.fit_controller import make_target
    from app.gui.fit_tab import TargetSpec

    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama")
    tab = window.details.fit
    tab.target_box.setCurrentIndex(tab.target_box.findData("custom"))
    tab.vram.setValue(4000)
    settle(qtbot, window)
    model = window.selected_model()
    here = recommend(conversion_candidates(model), make_target(TargetSpec("machine")),
                     window.fits.context)
    what_if = [f.verdict.kind for f in tab.report.candidates if not f.candidate.keep]
    assert set(what_if) == {"gpu"}  # the Fit tab answers its "what if"
    window.convert_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    settle(qtbot, window)
    assert [(f.candidate.quant, f.verdict.kind) for f in dialog._estimates] == \
        [(f.candidate.quant, f.verdict.kind) for f in here]
    dialog.reject()


# A model file replaced after the sheet checked its plan: the job refuses the plan in its
# process, the window says which file changed and that nothing was written, and stays usable.
def checked_sheet(qtbot, window: MainWindow, model: Path) -> ConvertDialog:  # type: ignore[no-untyped-def]
    assert window.select_model_path(model)
    window.convert_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    settle(qtbot, window)
    next(b for b in dialog.types.buttons() if b.property("quant") == "Q8_0").click()
    settle(qtbot, window)
    assert dialog.start.isEnabled() and "Writes" in dialog.summary.text()
    return dialog


def test_a_file_replaced_after_the_sheet_checked_fails_the_job_and_nothing_is_written(
        qtbot, window: MainWindow) -> None:  # type: ignore[no-untyped-def]
    folder = window.settings.folders()[0]
    weights = folder / "tiny-llama" / "model.safetensors"
    dialog = checked_sheet(qtbot, window, folder / "tiny-llama")
    # Replaced by a copy (a re-download): same bytes and size, another file.
    shutil.copyfile(weights, weights.with_suffix(".new"))
    os.replace(weights.with_suffix(".new"), weights)
    dialog.start.click()
    settle(qtbot, window)
    record = next(r for r in window.queue.jobs.values() if r.title.startswith("Convert"))
    assert record.state == "failed"
    assert record.text == (f"{weights}: was replaced by another file since the plan was "
                           "checked. nothing was written; start the job again so that it is "
                           "planned from the file as it is now")
    assert window.jobs_panel._items[record.job_id].text(4) == f"failed: {record.text}"
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-llama"]  # no output, no .part

    checked_sheet(qtbot, window, folder / "tiny-llama").start.click()
    settle(qtbot, window)
    settle(qtbot, window)
    assert (folder / "tiny-llama-Q8_0.gguf").is_file()
