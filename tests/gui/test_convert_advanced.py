"""The convert sheet's advanced options: an importance matrix chosen or computed, the per-tensor
plan with overrides, a size target; each checked in the window and handed to the job as the
program the sheet showed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gui_helpers import open_window, settle
from PySide6.QtWidgets import QApplication

from app.core.convert import ConvertRequest, plan_conversion
from app.core.jobs import RecordingReporter, run_job
from app.core.quant.imatrix_file import write_imatrix
from app.gui.convert_dialog import ConvertDialog
from app.gui.main_window import MainWindow
from app.gui.settings import AppSettings
from factories import make_gguf_from_hf

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"
SOURCE = "tiny-llama-2l-rows32-F32.gguf"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    shutil.copy(DATA / SOURCE, root / SOURCE)
    return root


@pytest.fixture()
def window(qtbot, settings: AppSettings, folder: Path) -> MainWindow:  # type: ignore[no-untyped-def]
    return open_window(qtbot, settings, folder)


def sheet(qtbot, window: MainWindow, path: Path) -> ConvertDialog:  # type: ignore[no-untyped-def]
    assert window.select_model_path(path)
    window.convert_action.trigger()
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, ConvertDialog) and w.isVisible())
    settle(qtbot, window)
    dialog.fold.setChecked(True)
    return dialog


def choose(qtbot, window: MainWindow, dialog: ConvertDialog, quant: str) -> None:  # type: ignore[no-untyped-def]
    next(b for b in dialog.types.buttons() if b.property("quant") == quant).click()
    settle(qtbot, window)


def start(qtbot, window: MainWindow, dialog: ConvertDialog) -> Path:  # type: ignore[no-untyped-def]
    """Start the sheet's job and wait for it; the output's path."""
    assert dialog.start.isEnabled(), dialog.start_reason.text() + dialog.summary.text()
    output = Path(dialog.output.text())
    dialog.start.click()
    settle(qtbot, window)
    settle(qtbot, window)
    assert output.is_file()
    return output


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def test_a_chosen_matrix_is_checked_and_the_job_writes_with_it(
        qtbot, window: MainWindow, folder: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plans: list[str] = []
    real_plan = ConvertRequest.plan
    monkeypatch.setattr(ConvertRequest, "plan",
                        lambda self: plans.append(self.out_type) or real_plan(self))
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q4_K_M")
    assert dialog.importance.from_file.isEnabled()
    assert "K-quants" not in dialog.importance.reason.text()
    dialog.importance.use_file(DATA / "imatrix.gguf")
    settle(qtbot, window)
    status = dialog.importance.status.text()
    assert "Importance matrix imatrix.gguf" in status and "weights 6 of 7" in status
    assert "token_embd.weight" in status  # the one tensor it does not cover, named
    assert "importance matrix" in dialog.summary.text().lower()
    table = dialog.tensors.table
    coverage = {table.topLevelItem(i).text(0): table.topLevelItem(i).text(4)
                for i in range(table.topLevelItemCount())}
    assert not table.isColumnHidden(4)
    assert coverage["token_embd.weight"] == "not covered"
    assert coverage["blk.0.attn_k.weight"] == "weighted"
    read = len(plans)
    output = start(qtbot, window, dialog)
    assert len(plans) == read  # the job ran the checked program
    reporter = RecordingReporter()
    expected = tmp_path / "expected.gguf"
    result = run_job(ConvertRequest(folder / SOURCE, expected, "Q4_K_M", device="cpu",
                                    imatrix=DATA / "imatrix.gguf"), reporter)
    assert result.status == "done", result.error
    assert tensors_of(output) == tensors_of(expected)
    reader = gguf.GGUFReader(output)
    assert "quantize.imatrix.file" in reader.fields


def test_a_matrix_for_another_model_is_refused_in_the_window(
        qtbot, window: MainWindow, folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.imatrix.gguf"
    write_imatrix(other, {"blk.0.ffn_down.weight": np.ones((1, 32), np.float32)},
                  {"blk.0.ffn_down.weight": [1]}, datasets=[], chunk_count=1, chunk_size=1)
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q4_K_M")
    dialog.importance.use_file(other)
    settle(qtbot, window)
    assert "blk.0.ffn_down.weight" in dialog.importance.status.text()
    assert "blk.0.ffn_down.weight" in dialog.summary.text()
    assert not dialog.start.isEnabled()
    dialog.importance.none.setChecked(True)
    settle(qtbot, window)
    assert dialog.start.isEnabled()
    dialog.reject()


def test_unavailable_matrix_options_say_why(qtbot, window: MainWindow, folder: Path,
                                            tiny_models: dict[str, Path]) -> None:
    dialog = sheet(qtbot, window, folder / SOURCE)
    panel = dialog.importance
    choose(qtbot, window, dialog, "Q4_K_M")
    # a GGUF source cannot run the model to compute one; a file can still be chosen
    assert panel.from_file.isEnabled() and not panel.from_text.isEnabled()
    assert "Hugging Face folder" in panel.reason.text() and not panel.reason.isHidden()
    choose(qtbot, window, dialog, "Q8_0")
    assert not panel.from_file.isEnabled()
    assert "K-quants" in panel.reason.text()
    dialog.reject()
    make_gguf_from_hf(tiny_models["llama"], folder / "tiny-Q4_0.gguf", "Q4_0")
    window.add_folder(folder)
    settle(qtbot, window)
    dialog = sheet(qtbot, window, folder / "tiny-Q4_0.gguf")
    choose(qtbot, window, dialog, "Q4_K_M")
    assert not dialog.importance.from_file.isEnabled()
    assert "already quantized" in dialog.importance.reason.text()
    dialog.to_hf.setChecked(True)
    settle(qtbot, window)
    assert "GGUF output" in dialog.tensors.reason.text() and not dialog.tensors.rules.isEnabled()
    assert "GGUF output" in dialog.sizing.reason.text() and not dialog.sizing.to_size.isEnabled()
    dialog.reject()


def test_an_override_reaches_the_written_file(qtbot, window: MainWindow, folder: Path) -> None:
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q4_K_M")
    table = dialog.tensors.table
    rows = {table.topLevelItem(i).text(0): table.topLevelItem(i)
            for i in range(table.topLevelItemCount())}
    assert rows["blk.0.attn_k.weight"].text(1) == "256×32"  # as `inspect` prints it
    assert rows["blk.0.attn_k.weight"].text(2) == "Q4_K"
    rows["blk.0.attn_k.weight"].setSelected(True)
    dialog.tensors.selected_type.setCurrentText("Q8_0")
    dialog.tensors.set_selected.click()
    dialog.tensors.output_type.setCurrentText("Q5_K")
    settle(qtbot, window)
    rows = {table.topLevelItem(i).text(0): table.topLevelItem(i)
            for i in range(table.topLevelItemCount())}
    assert rows["blk.0.attn_k.weight"].text(2) == "Q8_0"  # re-checked with the override
    assert rows["output.weight"].text(2) == "Q5_K"
    assert rows["blk.1.attn_v.weight"].text(2) != "Q8_0"  # only the chosen tensor
    output = start(qtbot, window, dialog)
    written = {t.name: t.tensor_type.name for t in gguf.GGUFReader(output).tensors}
    assert written["blk.0.attn_k.weight"] == "Q8_0"
    assert written["output.weight"] == "Q5_K"
    assert written["blk.0.ffn_down.weight"] != "Q8_0"


def test_a_malformed_rule_is_explained_and_blocks_start(qtbot, window: MainWindow,
                                                        folder: Path) -> None:
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q4_K_M")
    dialog.tensors.rules.setText("attn_v=Q9_X")
    dialog.tensors.rules.editingFinished.emit()
    assert not dialog.start.isEnabled()
    assert "Q9_X" in dialog.tensors.problem.text() and "Q8_0" in dialog.tensors.problem.text()
    assert "rules" in dialog.start_reason.text()
    dialog.tensors.rules.setText("attn_v=q8_0")
    dialog.tensors.rules.editingFinished.emit()
    settle(qtbot, window)
    assert dialog.start.isEnabled() and dialog.tensors.problem.isHidden()
    dialog.reject()


def test_fit_to_size_shows_the_fitted_plan_before_writing(qtbot, window: MainWindow,
                                                          folder: Path) -> None:
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q8_0")
    q8 = plan_conversion(folder / SOURCE, folder / "x.gguf", out_type="Q8_0").output_bytes
    q4 = plan_conversion(folder / SOURCE, folder / "x.gguf", out_type="Q4_K_M").output_bytes
    dialog.sizing.size.setText("4.2 parsecs")
    dialog.sizing.to_size.setChecked(True)
    assert not dialog.start.isEnabled()
    assert "not a size" in dialog.sizing.size_problem.text()
    assert "size target" in dialog.start_reason.text()
    dialog.sizing.choose_size(str((q8 + q4) // 2))
    settle(qtbot, window)
    summary = dialog.summary.text()
    assert "Size target" in summary, summary
    assert not any(folder.glob("*-Q8_0.gguf"))  # shown, not written
    budget = dialog.request().target_size
    output = start(qtbot, window, dialog)
    assert q4 < output.stat().st_size <= budget


def test_the_window_plans_a_matrix_without_torch(tmp_path: Path,
                                                 tiny_models: dict[str, Path]) -> None:
    source = tiny_models["llama"]
    plan = plan_conversion(source, tmp_path / "o.gguf", out_type="Q4_K_M")
    rows = {t.name: np.ones((1, t.shape[-1]), np.float32) for t in plan.tensors
            if len(t.shape) == 2 and t.name != "token_embd.weight"}
    write_imatrix(tmp_path / "m.gguf", rows, {name: [1] for name in rows}, datasets=["x"],
                  chunk_count=1, chunk_size=16)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from app.core.convert import ConvertRequest\n"
        "from app.gui.convert_controller import plan_and_check\n"
        f"request = ConvertRequest(Path({str(source)!r}), Path({str(tmp_path / 'o.gguf')!r}), "
        f"'Q4_K_M', device='cpu', imatrix=Path({str(tmp_path / 'm.gguf')!r}))\n"
        "checked = plan_and_check(request)\n"
        "assert checked.plan.importance.covered, checked.error\n"
        "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_matrix_computed_from_a_text_is_used(qtbot, settings: AppSettings, tmp_path: Path,
                                              tiny_models: dict[str, Path]) -> None:
    root = tmp_path / "hf"
    root.mkdir()
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    text = tmp_path / "calibration.txt"
    text.write_text(" ".join(f"The river {n} runs past the mill and the bridge." for n in
                             range(400)))
    window = open_window(qtbot, settings, root)
    dialog = sheet(qtbot, window, root / "tiny-llama")
    choose(qtbot, window, dialog, "Q4_K_M")
    panel = dialog.importance
    assert panel.from_text.isEnabled() and not panel.compute.isEnabled()  # no text yet
    panel.text.setText(str(text))
    assert panel.compute.isEnabled()
    panel.compute.click()
    settle(qtbot, window)
    settle(qtbot, window)
    record = next(r for r in window.queue.jobs.values() if r.title.startswith("Importance"))
    assert record.state == "done", record.text
    matrix = root / "tiny-llama.imatrix.gguf"
    assert matrix.is_file()
    assert panel.from_file.isChecked() and panel.file.text() == str(matrix)
    assert "weights" in panel.status.text()
    assert dialog.request().imatrix == matrix and dialog.start.isEnabled()
    dialog.reject()


def test_fit_this_gpu_and_a_size_too_small(qtbot, window: MainWindow, folder: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import app.gui.convert_controller as controller

    monkeypatch.setattr(controller, "first_gpu", lambda: (2 * 2**30, "Test GPU"))
    dialog = sheet(qtbot, window, folder / SOURCE)
    choose(qtbot, window, dialog, "Q4_K_M")
    sizing = dialog.sizing
    assert sizing.to_gpu.isEnabled() and "Test GPU" in sizing.gpu_reason.text()
    sizing.to_gpu.setChecked(True)
    request = dialog.request()
    assert request.fit_gpu_vram == 2 * 2**30 and request.fit_gpu_context == 4096
    qtbot.waitUntil(lambda: fitting(window) is not None, timeout=60000)
    gpu_job = fitting(window)
    assert gpu_job.request.request.fit_gpu_vram == 2 * 2**30
    sizing.choose_size("1KiB")  # a newer request: the GPU's measurement is not wanted now
    settle(qtbot, window)
    assert gpu_job.state == "cancelled"
    assert "below the smallest" in dialog.summary.text()
    assert not dialog.start.isEnabled()
    dialog.reject()


def fitting(window: MainWindow):  # type: ignore[no-untyped-def]
    """The first size-fitting job of the window, if any."""
    from app.core.convert.plan_fitted import FitToSizeRequest

    return next((r for r in window.queue.jobs.values()
                 if isinstance(r.request, FitToSizeRequest)), None)
