"""The Compare view's result: the verdict's severity in the badge colours, and a KL plot with
labelled axes and the noise floor, readable in the smallest window the app is made for."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from gui_helpers import open_window
from PySide6.QtGui import QColor, QFontMetricsF, QImage

from app.core.generate.compare import CompareResult
from app.gui.fit_badge import COLORS
from app.gui.kl_plot import FLOOR_COLOR, KLPlot, layout_plot, nice_step, tick_label
from app.gui.settings import AppSettings

RESULT = CompareResult(
    ppl_ref=320.6, ppl_candidate=320.7, kl_mean=2.6e-4, kl_p99=3.5e-4, top1_agreement=0.95,
    n_tokens=1432, per_token_kl=tuple(2e-4 + 1e-4 * math.sin(i / 7) ** 2 for i in range(1432)),
    verdict="Q4_0 keeps …", reference="a", candidate="b", ref_backend="transformers",
    candidate_backend="transformers", text_source="sample", window_tokens=256, n_windows=7,
    peak_bytes=1, reference_dtype="float32", noise_floor=1e-4)


def test_nice_steps_and_labels() -> None:
    assert nice_step(1432, 5) == 500
    assert nice_step(4.6e-4, 4) == pytest.approx(2e-4)
    assert nice_step(10, 10) == 1
    assert tick_label(1.5e-4, 5e-5) == "0.00015"
    assert tick_label(5e-4, 5e-5) == "0.00050"  # one width for every tick of the axis
    assert tick_label(2e-7, 1e-7) == "2.0e-07"
    assert tick_label(6e-4 + 1e-19, 2e-4) == "0.0006"  # float drift never shows
    assert tick_label(1000, 500) == "1000" and tick_label(0, 0.1) == "0"


def test_the_axes_cover_the_data_and_the_floor(qapp) -> None:  # type: ignore[no-untyped-def]
    metrics = QFontMetricsF(qapp.font())
    layout = layout_plot(380, 200, metrics, 1432, top=4.6e-4, floor=1e-4)
    values = [t.value for t in layout.y_ticks]
    assert values[0] == 0 and values == sorted(values) and layout.y_max >= 4.6e-4
    assert layout.y_ticks[-1].value == layout.y_max
    assert [t.label for t in layout.x_ticks][0] == "1"
    assert all(1 <= t.value <= 1432 for t in layout.x_ticks)
    # A floor above every value still lies inside the plot.
    high = layout_plot(380, 200, metrics, 10, top=1e-6, floor=3e-3)
    assert high.y_max > 3e-3 and high.area.top() < high.y_at(3e-3) < high.area.bottom()


def _labels_fit(plot: KLPlot) -> None:
    layout = plot.plot_layout()
    metrics = QFontMetricsF(plot.font())
    assert len(layout.y_ticks) >= 3 and len(layout.x_ticks) >= 2
    ys = [layout.y_at(t.value) for t in layout.y_ticks]
    assert all(a - b >= metrics.height() for a, b in zip(ys, ys[1:], strict=False))
    spans = [(layout.x_at(t.value) - metrics.horizontalAdvance(t.label) / 2,
              layout.x_at(t.value) + metrics.horizontalAdvance(t.label) / 2)
             for t in layout.x_ticks]
    assert all(a[1] + 4 <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert spans[0][0] >= 0 and spans[-1][1] <= plot.width()
    widest = max(metrics.horizontalAdvance(t.label) for t in layout.y_ticks)
    assert widest <= layout.area.left()


@pytest.mark.parametrize("size", [(1024, 640), (1280, 800)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_result_in_the_window(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                  size: tuple[int, int]) -> None:
    window = open_window(qtbot, settings)
    window.resize(*size)
    window.show_test_tab()
    panel = window.details.test.compare
    window.details.test.setCurrentWidget(panel)
    panel.show_result(RESULT)
    qtbot.wait(30)
    assert panel.severity.isVisible() and panel.severity.text() == "minor"
    assert panel.plot.height() >= 160
    _labels_fit(panel.plot)
    image = QImage(panel.plot.size(), QImage.Format.Format_ARGB32)
    panel.plot.render(image)
    layout = panel.plot.plot_layout()
    background = QColor(panel.plot.palette().base().color()).rgb()

    def inked(x0: float, x1: float, y: float) -> bool:
        return any(image.pixel(x, int(y)) != background for x in range(int(x0), int(x1)))

    for tick in layout.y_ticks:  # every y label is drawn left of the axis
        assert inked(0, layout.area.left() - 4, layout.y_at(tick.value)), tick
    floor_y = round(layout.y_at(RESULT.noise_floor))
    floor = QColor(FLOOR_COLOR)
    row = [QColor(image.pixel(x, y)) for x in range(int(layout.area.left()) + 2,
                                                    int(layout.area.right()))
           for y in (floor_y - 1, floor_y, floor_y + 1)]
    assert sum(abs(c.blue() - floor.blue()) < 40 and abs(c.red() - floor.red()) < 40
               for c in row) > len(row) / 6


@pytest.mark.parametrize("kl, top1, severity, color", [
    (5e-5, 1.0, "indistinguishable", COLORS["gpu"]),
    (0.02, 0.95, "minor", COLORS["gpu"]),
    (0.1, 0.95, "noticeable", COLORS["partial"]),
    (3e-4, 0.79, "degraded", COLORS["none"]),
])
def test_the_severity_badge_takes_the_fit_colours(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                  kl: float, top1: float, severity: str,
                                                  color: str) -> None:
    window = open_window(qtbot, settings)
    panel = window.details.test.compare
    window.show_test_tab()
    window.details.test.setCurrentWidget(panel)
    panel.show_result(replace(RESULT, kl_mean=kl, top1_agreement=top1))
    qtbot.wait(10)
    badge = panel.severity
    assert badge.text() == severity and badge.isVisible()
    image = badge.grab().toImage()
    want = QColor(color)
    filled = sum(QColor(image.pixel(x, y)) == want for x in range(image.width())
                 for y in range(image.height()))
    assert filled > image.width() * image.height() / 3
    panel.show_status("cancelled")  # a run that did not finish shows no stale badge
    assert not badge.isVisible()
