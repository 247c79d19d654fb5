"""The Compare view's plot: per-token KL of the candidate from the reference, with labelled
axes and the comparison's noise floor as a dashed line.

The geometry (margins, ticks, their labels) is computed by `layout_plot` from the widget's size
and font, apart from painting, so what the plot shows can be checked without reading pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPainterPath, QPaintEvent, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

X_TITLE = "token position"
Y_TITLE = "KL divergence (nats)"
LINE_COLOR = "#d64541"
FLOOR_COLOR = "#3a7bd5"


@dataclass(frozen=True)
class Tick:
    value: float
    label: str


@dataclass(frozen=True)
class PlotLayout:
    """Where everything goes in a plot of a given size."""

    area: QRectF  # the data area, axes along its left and bottom edges
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_range: tuple[float, float]  # first and last token position
    y_max: float  # the value at the top of the data area

    def x_at(self, position: float) -> float:
        first, last = self.x_range
        span = max(last - first, 1.0)
        return self.area.left() + self.area.width() * (position - first) / span

    def y_at(self, value: float) -> float:
        return self.area.bottom() - self.area.height() * value / self.y_max


def nice_step(span: float, max_ticks: int) -> float:
    """The smallest step of 1, 2 or 5 times a power of ten that cuts `span` into at most
    `max_ticks` intervals."""
    raw = span / max(max_ticks, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10.0 * power


MAX_FIXED_DECIMALS = 5  # 0.00005 still reads at a glance; smaller steps go scientific


def tick_label(value: float, step: float) -> str:
    """A tick's value with the decimals its step needs, the same for every tick of an axis:
    0.0150, 300, 2.0e-07."""
    decimals = max(0, math.ceil(-math.log10(step) - 1e-9)) if step > 0 else 0
    if value == 0:
        return "0"
    if decimals > MAX_FIXED_DECIMALS:
        return f"{value:.1e}"
    return f"{value:.{decimals}f}"


def y_axis_ticks(top: float, max_ticks: int) -> tuple[tuple[Tick, ...], float]:
    """Ticks from 0 up to the first tick at or above `top`, and that tick's value."""
    top = top if top > 0 else 1e-9
    step = nice_step(top, max_ticks)
    count = max(1, math.ceil(top / step - 1e-9))
    ticks = tuple(Tick(i * step, tick_label(i * step, step)) for i in range(count + 1))
    return ticks, count * step


def x_axis_ticks(first: int, last: int, max_ticks: int) -> tuple[Tick, ...]:
    """Integer positions, the first one and then round multiples of a nice step."""
    step = max(1.0, nice_step(last - first, max_ticks))
    ticks = [Tick(first, str(first))]
    value = math.ceil((first + step * 0.5) / step) * step
    while value <= last:
        ticks.append(Tick(value, f"{int(value):,}"))
        value += step
    return tuple(ticks)


def layout_plot(width: float, height: float, metrics: QFontMetricsF, n_values: int,
                top: float, floor: float) -> PlotLayout:
    """Margins fit the widest tick label; tick counts leave each label room to breathe."""
    line = metrics.height()
    pad = 6.0
    top_margin = 1.5 * line + pad  # the y title and the floor's legend sit above the data area
    bottom_margin = 2 * line + pad  # x tick labels, then the x title
    rows = max(2, int((height - top_margin - bottom_margin) / (2.6 * line)))
    y_ticks, y_max = y_axis_ticks(max(top, floor * 1.15), rows)
    left_margin = max(metrics.horizontalAdvance(t.label) for t in y_ticks) + pad + 4
    area = QRectF(left_margin, top_margin, max(width - left_margin - pad - 8, 1.0),
                  max(height - top_margin - bottom_margin, 1.0))
    last = max(n_values, 1)
    widest = metrics.horizontalAdvance(f"{last:,}") + 3 * line
    x_ticks = x_axis_ticks(1, last, max(1, int(area.width() / widest)))
    return PlotLayout(area, x_ticks, y_ticks, (1.0, float(last)), y_max)


class KLPlot(QWidget):
    """Per-token KL divergence of the candidate from the reference."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: tuple[float, ...] = ()
        self.floor = 0.0
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_values(self, values: tuple[float, ...], floor: float = 0.0) -> None:
        self.values = values
        self.floor = floor
        top = max(values, default=0.0)
        self.setToolTip(f"{len(values)} tokens; highest KL {top:.4g} nats; noise floor "
                        f"{floor:.0e}" if values else "")
        self.update()

    def plot_layout(self) -> PlotLayout:
        return layout_plot(self.width(), self.height(), QFontMetricsF(self.font()),
                           len(self.values), max(self.values, default=0.0), self.floor)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        if not self.values:
            painter.setPen(self.palette().placeholderText().color())
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             "per-token KL appears here")
            return
        layout = self.plot_layout()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        self._paint_axes(painter, layout)
        self._paint_values(painter, layout)
        self._paint_floor(painter, layout)

    def _paint_axes(self, painter: QPainter, layout: PlotLayout) -> None:
        area = layout.area
        text = self.palette().text().color()
        grid = QColor(text)
        grid.setAlpha(40)
        metrics = QFontMetricsF(self.font())
        line = metrics.height()
        for tick in layout.y_ticks:
            y = layout.y_at(tick.value)
            painter.setPen(grid)
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            painter.setPen(text)
            painter.drawText(QRectF(0, y - line / 2, area.left() - 6, line),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             tick.label)
        for tick in layout.x_ticks:
            x = layout.x_at(tick.value)
            painter.setPen(text)
            painter.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 4))
            half = metrics.horizontalAdvance(tick.label) / 2 + 2
            painter.drawText(QRectF(x - half, area.bottom() + 4, 2 * half, line),
                             Qt.AlignmentFlag.AlignCenter, tick.label)
        painter.setPen(text)
        painter.drawLine(area.bottomLeft(), area.bottomRight())
        painter.drawLine(area.bottomLeft(), area.topLeft())
        painter.drawText(QRectF(area.left(), area.bottom() + 4 + line, area.width(), line),
                         Qt.AlignmentFlag.AlignCenter, X_TITLE)
        painter.drawText(QRectF(0, 0, self.width(), line + 2),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, Y_TITLE)

    def _paint_values(self, painter: QPainter, layout: PlotLayout) -> None:
        area = layout.area
        path = QPainterPath(QPointF(area.left(), area.bottom()))
        for index, value in enumerate(self.values):
            path.lineTo(layout.x_at(index + 1), layout.y_at(min(value, layout.y_max)))
        path.lineTo(layout.x_at(len(self.values)), area.bottom())
        fill = QColor(LINE_COLOR)
        fill.setAlpha(90)
        painter.fillPath(path, fill)
        painter.setPen(QColor(LINE_COLOR))
        painter.drawPath(path)

    def _paint_floor(self, painter: QPainter, layout: PlotLayout) -> None:
        if self.floor <= 0:
            return
        area = layout.area
        pen = QPen(QColor(FLOOR_COLOR), 1.5, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        y = layout.y_at(self.floor)
        painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
        # The legend sits in the title row, so it stays readable wherever the line falls.
        metrics = QFontMetricsF(self.font())
        legend = f"noise floor {self.floor:.0e}"
        text_width = metrics.horizontalAdvance(legend)
        right = area.right()
        row = metrics.height() / 2 + 1
        painter.drawLine(QPointF(right - text_width - 30, row), QPointF(right - text_width - 8,
                                                                        row))
        painter.setPen(self.palette().text().color())
        painter.drawText(QRectF(right - text_width - 4, 0, text_width + 4, metrics.height() + 2),
                         Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, legend)
