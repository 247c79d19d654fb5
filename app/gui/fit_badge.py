"""The fit badge: a coloured pill per verdict (green GPU, amber partial, blue RAM, red no,
grey unknown), its text, sort order and tooltip."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.core.estimate.verdict import Verdict
from app.core.formats.model_info import format_bytes

COLORS = {"gpu": "#2e9d4f", "partial": "#d98e04", "ram": "#3a7bd5", "none": "#d64541",
          "unknown": "#8a8f98", None: "#b9bdc4"}
ORDER = {"gpu": 0, "partial": 1, "ram": 2, "none": 3, "unknown": 4}
FIT_ROLE = Qt.ItemDataRole.UserRole + 4


def fit_short_text(verdict: Verdict | None) -> str:
    if verdict is None:
        return "…"
    if verdict.kind == "partial" and verdict.estimate is not None:
        return f"{verdict.estimate.gpu_layers}/{verdict.estimate.total_layers}"
    return {"gpu": "GPU", "ram": "RAM", "none": "no", "unknown": "?"}[verdict.kind]


def fit_sort_key(verdict: Verdict | None) -> tuple[int, int]:
    if verdict is None:
        return (9, 0)
    layers = verdict.estimate.gpu_layers if verdict.estimate is not None else 0
    return (ORDER[verdict.kind], -layers)


def fit_tooltip(verdict: Verdict | None, context_text: str) -> str:
    if verdict is None:
        return "estimating…"
    lines = [verdict.text, context_text]
    estimate = verdict.estimate
    if estimate is not None:
        def part(label: str, b) -> str:  # type: ignore[no-untyped-def]
            return (f"{label}: {format_bytes(b.total)} = weights {format_bytes(b.weights)} + "
                    f"KV {format_bytes(b.kv_cache)} + compute {format_bytes(b.compute)} + "
                    f"overhead {format_bytes(b.overhead)}")
        lines.append(part("RAM", estimate.ram))
        lines += [part(f"GPU {i}", v) for i, v in enumerate(estimate.vram) if v.total]
        lines += [f"approximate: {note}" for note in estimate.approximate]
    return "\n".join(line for line in lines if line)


class FitBadgeDelegate(QStyledItemDelegate):
    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        self.initStyleOption(option, index)
        style = option.widget.style() if option.widget else None
        text = option.text
        option.text = ""
        if style is not None:  # selection background, focus
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, option, painter,
                              option.widget)
        verdict: Verdict | None = index.data(FIT_ROLE)
        color = QColor(COLORS[verdict.kind if verdict else None])
        metrics = option.fontMetrics
        width = max(metrics.horizontalAdvance(text) + 14, 34)
        height = metrics.height() + 2
        rect = QRectF(option.rect.center().x() - width / 2, option.rect.center().y() - height / 2,
                      width, height)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        # On a selected row the badge keeps a light rim, so it stands out of the highlight.
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.setPen(QColor("white") if selected else Qt.PenStyle.NoPen)
        painter.setBrush(color)
        painter.drawRoundedRect(rect, height / 2, height / 2)
        painter.setPen(QColor("white"))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()
