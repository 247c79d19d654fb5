"""Render what a user sees, at 1280×800 and 1024×640, and check what a person would: no control
smaller than it needs, no clipped label, no empty pane without a word about why.

The PNGs go to a temporary folder; with MODELYARD_SCREENSHOTS=1 they are also written to
resources/screenshots/ for the README (at 1280×800).
"""

from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QApplication,
    QComboBox,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QWidget,
)

from app.core.jobs import Reporter, check_cancel
from app.gui.appearance import apply_appearance
from app.gui.convert_dialog import ConvertDialog
from app.gui.main_window import MainWindow
from app.gui.settings import AppSettings
from factories import make_gguf

SIZES = ((1280, 800), (1024, 640))
README_SIZE = (1280, 800)
SCREENSHOTS = Path(__file__).resolve().parents[2] / "resources" / "screenshots"


@dataclass(frozen=True)
class HalfWay:
    """Stops at 40 % until released: the jobs panel mid-job."""

    release: threading.Event = field(default_factory=threading.Event, compare=False)
    progress_unit: str = "bytes"
    title: str = "Convert SmolLM2-135M-Instruct → Q8_0"

    def run(self, reporter: Reporter) -> None:
        reporter.log("info", "planning the conversion")
        for step in range(4):  # the worker passes on about 20 reports a second
            reporter.progress((step + 1) * 25_000_000, 250_000_000,
                              f"tensor {(step + 1) * 10} of 100")
            self.release.wait(0.1)
        reporter.log("info", "blk.12.ffn_down.weight: Q4_1 → Q8_0")
        while not self.release.wait(0.02):
            check_cancel(reporter)


def problems_in(root: QWidget) -> list[str]:
    """What a person would call broken in `root` as it is drawn now."""
    QApplication.processEvents()  # layouts catch up with texts that just changed
    QApplication.processEvents()
    found = []
    for widget in [root, *root.findChildren(QWidget)]:
        if not widget.isVisibleTo(root) or widget.window() is not root.window():
            continue
        name = f"{type(widget).__name__} {widget.objectName() or ''}".strip()
        if isinstance(widget, (QAbstractButton, QComboBox)):
            hint = widget.minimumSizeHint() if isinstance(widget, QComboBox) else \
                widget.sizeHint()
            if widget.height() < hint.height() or widget.width() < hint.width():
                text = widget.currentText() if isinstance(widget, QComboBox) else widget.text()
                found.append(f"{name} {text!r}: {widget.width()}×{widget.height()} < "
                             f"{hint.width()}×{hint.height()}")
        elif isinstance(widget, QLabel) and widget.text():
            if widget.wordWrap():
                needed = widget.heightForWidth(widget.width())
                if needed > widget.height() + 1:
                    found.append(f"{name} {widget.text()[:40]!r}: clipped, {widget.height()} px"
                                 f" high of {needed}")
            elif widget.width() + 1 < widget.sizeHint().width():
                found.append(f"{name} {widget.text()[:40]!r}: clipped, {widget.width()} px "
                             f"wide of {widget.sizeHint().width()}")
        elif (isinstance(widget, QAbstractItemView) and not isinstance(widget, QHeaderView)
              and widget.model() is not None):
            if widget.model().rowCount() == 0 and not _says_why_empty(widget):
                found.append(f"{name}: an empty list with no word about why")
        elif isinstance(widget, QPlainTextEdit):
            if not widget.toPlainText() and not widget.placeholderText():
                found.append(f"{name}: an empty text box with no placeholder")
    return found


def _says_why_empty(view: QAbstractItemView) -> bool:
    holder = view.parentWidget() or view
    return any(label.text().strip() and label.isVisibleTo(holder)
               for label in holder.findChildren(QLabel))


def save(widget: QWidget, name: str, out: Path, size: tuple[int, int]) -> Path:
    QApplication.processEvents()
    path = out / f"{name}-{size[0]}x{size[1]}.png"
    assert widget.grab().save(str(path)), path
    if os.environ.get("MODELYARD_SCREENSHOTS") and size == README_SIZE:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")
    return path


@pytest.fixture(autouse=True, scope="module")
def styled(qapp):  # type: ignore[no-untyped-def]
    """The look the app starts with (palette, style sheet), put back after these tests."""
    palette, sheet, style = qapp.palette(), qapp.styleSheet(), qapp.style().name()
    apply_appearance(qapp)
    yield
    qapp.setStyle(style)
    qapp.setPalette(palette)
    qapp.setStyleSheet(sheet)


@pytest.fixture()
def folder(tmp_path: Path, smollm2_gguf: Path, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    (root / smollm2_gguf.name).symlink_to(smollm2_gguf)
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    shutil.copytree(tiny_models["mixtral"], root / "tiny-mixtral")
    make_gguf(root / "tiny-moe-split-experts.gguf", n_experts=4, expert_layout="split")
    return root


def sized(qtbot, settings: AppSettings, size: tuple[int, int],  # type: ignore[no-untyped-def]
          folder: Path | None = None) -> MainWindow:
    window = open_window(qtbot, settings, folder)
    window.resize(*size)
    window.sources.select("all")
    settle(qtbot, window)
    qtbot.wait(30)
    return window


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_first_launch(qtbot, settings: AppSettings, tmp_path: Path,  # type: ignore[no-untyped-def]
                      size: tuple[int, int]) -> None:
    window = sized(qtbot, settings, size)
    save(window, "first-launch", tmp_path, size)
    assert problems_in(window) == []
    details = window.details
    for index in range(details.count()):  # no model yet: every tab says what it will show
        details.setCurrentIndex(index)
        qtbot.wait(10)
        assert problems_in(window) == [], details.tabText(index)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_window_and_every_tab(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                                   tmp_path: Path, smollm2_gguf: Path,
                                   size: tuple[int, int]) -> None:
    window = sized(qtbot, settings, size, folder)
    assert window.select_model_path(folder / smollm2_gguf.name)
    settle(qtbot, window)
    details = window.details
    for index in range(details.count()):
        details.setCurrentIndex(index)
        settle(qtbot, window)
        name = details.tabText(index).split(" ")[0].lower()
        save(window, "main-window" if index == 0 else name, tmp_path, size)
        assert problems_in(window) == [], name


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_convert_sheet_with_a_long_plan(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                                        tmp_path: Path, size: tuple[int, int]) -> None:
    window = sized(qtbot, settings, size, folder)
    assert window.select_model_path(folder / "tiny-llama")
    window.convert_action.trigger()
    settle(qtbot, window)
    dialog = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, ConvertDialog) and w.isVisible())
    request = dialog.request()
    assert request is not None
    plan = request.plan()
    warnings = tuple(f"blk.{i}.ffn_down.weight: 128 columns are not a multiple of 256, so "
                     "it falls back to Q5_0 (as llama-quantize does)" for i in range(6))
    dialog.show_plan(request, replace(plan, warnings=plan.warnings + warnings), None,
                     40 * 1024**3)
    dialog.adjustSize()
    qtbot.wait(30)
    save(dialog, "convert-sheet", tmp_path, size)
    assert dialog.height() <= size[1]  # the sheet fits on the screen it opens on
    assert problems_in(dialog) == []
    dialog.reject()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_jobs_panel_mid_job(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                            tmp_path: Path, size: tuple[int, int]) -> None:
    window = sized(qtbot, settings, size, folder)
    job = HalfWay()
    job_id = window.queue.submit(job)
    try:
        qtbot.waitUntil(lambda: window.queue.jobs[job_id].done >= 100_000_000, timeout=10000)
        qtbot.wait(600)  # the speed shows once the job has run half a second
        window.jobs_panel._refresh(job_id)
        save(window, "jobs", tmp_path, size)
        assert window.jobs_dock.isVisible()
        bar = window.jobs_panel._bars[job_id]
        assert bar.maximum() > 0 and bar.value() == 400
        assert problems_in(window) == []
    finally:
        job.release.set()
        settle(qtbot, window)


@pytest.mark.skipif(not os.environ.get("MODELYARD_SCREENSHOTS"),
                    reason="a real comparison takes half a minute on two cores; run with "
                           "MODELYARD_SCREENSHOTS=1 (as when the README's pictures are made)")
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compare_done(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                      tmp_path: Path, size: tuple[int, int]) -> None:
    from app.core.convert import ConvertRequest
    from app.core.generate.compare import CompareRequest
    from app.core.jobs import RecordingReporter

    candidate = folder / "tiny-llama-Q4_0.gguf"
    ConvertRequest(folder / "tiny-llama", candidate, "Q4_0", device="cpu",
                   pure=True).run(RecordingReporter())
    result = CompareRequest(folder / "tiny-llama", candidate, ref_backend="transformers",
                            candidate_backend="transformers").run(RecordingReporter())
    window = sized(qtbot, settings, size, folder)
    assert window.select_model_path(candidate)
    window.details.test.compare.remember_source(candidate, folder / "tiny-llama")
    window.details.test.compare.show_model(window.selected_model())
    window.show_test_tab()
    window.details.test.setCurrentWidget(window.details.test.compare)
    window.details.test.compare.show_result(result)
    settle(qtbot, window)
    save(window, "compare", tmp_path, size)
    assert problems_in(window) == []


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_models_view_with_incomplete_outputs(qtbot, settings: AppSettings, folder: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path, size: tuple[int, int]) -> None:
    (folder / "tiny-llama-Q8_0.gguf.part").write_bytes(b"\0" * 300_000)
    # A long name wraps in the banner instead of widening the window.
    long_name = "Meta-Llama-3.1-70B-Instruct-abliterated-Q4_K_M-00001-of-00005.gguf.part"
    (folder / long_name).write_bytes(b"\0" * 1000)
    (folder / "tiny-merge.part").mkdir()
    (folder / "tiny-merge.part" / "model.safetensors").write_bytes(b"\0" * 120_000)
    window = sized(qtbot, settings, size, folder)
    assert window.leftovers.isVisible() and len(window.leftovers.rows) == 3
    assert window.minimumSizeHint().width() <= size[0]
    assert window.size().width() == size[0] and window.size().height() == size[1]
    save(window, "incomplete-outputs", tmp_path, size)
    assert problems_in(window) == []
