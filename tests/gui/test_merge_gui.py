"""Merging from the window: the sheet, its coverage plan, YAML in and out, the job, the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtWidgets import QApplication

import factories
from app.core.merge import MergeRequest, parse_config
from app.gui.main_window import MainWindow
from app.gui.merge_dialog import MergeDialog


@pytest.fixture()
def window(qtbot, settings, tmp_path: Path,  # type: ignore[no-untyped-def]
           tiny_models: dict[str, Path]) -> MainWindow:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_models["llama"], folder / "llama-a")
    factories.make_hf_model(folder / "llama-b", "llama", seed=5)
    return open_window(qtbot, settings, folder)


def open_dialog() -> MergeDialog | None:
    return next((w for w in QApplication.topLevelWidgets()
                 if isinstance(w, MergeDialog) and w.isVisible()), None)


def wait_plan(qtbot, window: MainWindow, dialog: MergeDialog) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not dialog.timer.isActive(), timeout=5000)
    settle(qtbot, window)


def test_merge_sheet_shows_the_plan_runs_and_lists_the_result(
        qtbot, window: MainWindow, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "llama-a")
    window.merge_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    assert dialog.model_paths() == [folder / "llama-a"]
    dialog.add_model(folder / "llama-b")
    dialog.method.setCurrentText("ties")
    dialog.set_weight(1, 0.7, 0.4)
    dialog.output.setText(str(folder / "merged"))
    wait_plan(qtbot, window, dialog)
    dialog.union_vocabulary.setChecked(True)
    assert parse_config(dialog.yaml.toPlainText()).tokenizer_union
    dialog.union_vocabulary.setChecked(False)
    wait_plan(qtbot, window, dialog)
    config = parse_config(dialog.yaml.toPlainText())
    assert config.merge_method == "ties" and config.base_model.path == folder / "llama-a"
    assert not config.tokenizer_union
    other = config.slices[0].sources[1]
    assert other.parameters["weight"].value == 0.7
    assert other.parameters["density"].value == 0.4
    assert dialog.plan.topLevelItemCount() > 0
    actions = {dialog.plan.topLevelItem(i).text(1) for i in range(dialog.plan.topLevelItemCount())}
    assert actions == {"merged"}
    assert "tensors merged" in dialog.summary.text()
    assert dialog.start.isEnabled()

    # Export, then import into a new sheet: the form comes back the same.
    exported = tmp_path / "merge.yaml"
    dialog.export_wanted.emit(str(exported), dialog.yaml.toPlainText())
    settle(qtbot, window)
    assert exported.read_text() == dialog.yaml.toPlainText()

    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)  # the merge, then the rescan that lists its output
    assert (folder / "merged" / "model.safetensors").is_file()
    assert (folder / "merged" / "merge_report.json").is_file()
    selected = window.selected_model()
    assert selected is not None and selected.name == "merged"
    assert window.details.currentWidget() is window.details.test

    window.merge_action.trigger()
    second = open_dialog()
    assert second is not None and second is not dialog
    second.import_wanted.emit(str(exported))
    settle(qtbot, window)
    assert second.model_paths() == [folder / "llama-a", folder / "llama-b"]
    assert second.method.currentText() == "ties"
    assert second.yaml.toPlainText() == exported.read_text()
    second.reject()


def test_a_broken_input_is_refused_in_the_plan(qtbot, window: MainWindow,  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    folder = window.settings.folders()[0]
    broken = tmp_path / "broken"
    shutil.copytree(folder / "llama-b", broken)
    factories.drop_tensors(broken / "model.safetensors", ["model.layers.0.self_attn.q_proj.weight"])
    window.merge_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    dialog.add_model(folder / "llama-a")
    dialog.add_model(broken)
    dialog.output.setText(str(tmp_path / "out"))
    wait_plan(qtbot, window, dialog)
    refused = [dialog.plan.topLevelItem(i).text(0) for i in range(dialog.plan.topLevelItemCount())
               if dialog.plan.topLevelItem(i).text(1) == "refused"]
    assert refused == ["model.layers.0.self_attn.q_proj.weight"]
    assert not dialog.start.isEnabled()
    assert dialog.tabs.currentWidget() is dialog.plan

    # A config the form cannot hold (a per-layer gradient) runs as written from the YAML tab.
    dialog.yaml.setPlainText(
        f"merge_method: slerp\nbase_model: {folder / 'llama-a'}\nmodels:\n"
        f"  - model: {folder / 'llama-a'}\n  - model: {folder / 'llama-b'}\n"
        "parameters:\n  t: [0, 0.5, 1]\n")
    wait_plan(qtbot, window, dialog)
    assert not dialog.tabs.widget(0).isEnabled()
    assert dialog.start.isEnabled()
    dialog.reject()


def test_the_job_runs_the_plan_the_sheet_checked(qtbot, window: MainWindow,  # type: ignore[no-untyped-def]
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = window.settings.folders()[0]
    window.merge_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    dialog.add_model(folder / "llama-a")
    dialog.add_model(folder / "llama-b")
    dialog.output.setText(str(folder / "checked"))
    wait_plan(qtbot, window, dialog)
    assert dialog.start.isEnabled()
    shown = dialog.checked_request().program
    assert shown is not None
    submitted: list[object] = []
    submit = window.queue.submit
    monkeypatch.setattr(window.queue, "submit",
                        lambda request: (submitted.append(request), submit(request))[1])
    lines: list[str] = []
    window.queue.job_logged.connect(lambda _job, _level, text: lines.append(text))
    dialog.start.click()
    settle(qtbot, window)
    merges = [r for r in submitted if isinstance(r, MergeRequest)]
    assert len(merges) == 1 and merges[0].program is shown
    assert (folder / "checked" / "model.safetensors").is_file()
    # The job's process ran that plan: it did not plan the merge again.
    assert lines and not any(line.startswith("planning") for line in lines)


def test_an_existing_output_names_no_control_the_merge_sheet_lacks(qtbot, window: MainWindow,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    folder = window.settings.folders()[0]
    taken = tmp_path / "taken"
    taken.mkdir()
    window.merge_action.trigger()
    dialog = open_dialog()
    assert dialog is not None
    dialog.add_model(folder / "llama-a")
    dialog.add_model(folder / "llama-b")
    dialog.output.setText(str(taken))
    wait_plan(qtbot, window, dialog)
    text = dialog.summary.text()
    assert "output already exists" in text
    assert "choose another name" in text
    assert "replac" not in text and "overwrit" not in text  # the sheet has no such control
    assert "--" not in text and "convert sheet" not in text
    assert not dialog.start.isEnabled()
    dialog.reject()
