"""A scrolling area that asks for all of its content: the convert sheet's body, which scrolls
only when the window it covers is too short for it."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtWidgets import QScrollArea


class FullScrollArea(QScrollArea):
    """Asks for its whole content (a plain QScrollArea asks for at most 24 lines) and
    scrolls only when it gets less."""

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.height_limit: Callable[[], int] | None = None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's size changed: so does what this asks for
        return super().eventFilter(watched, event)

    def sizeHint(self) -> QSize:
        widget = self.widget()
        if widget is None:
            return super().sizeHint()
        hint = widget.sizeHint()
        return QSize(hint.width() + self.verticalScrollBar().sizeHint().width(),
                     hint.height())

    def minimumSizeHint(self) -> QSize:
        """All of the content while it fits in `height_limit`, then that much (scrolling)."""
        widget = self.widget()
        if widget is None:
            return super().minimumSizeHint()
        need = widget.minimumSizeHint()
        height = need.height() if self.height_limit is None else max(
            min(need.height(), self.height_limit()), self.fontMetrics().lineSpacing() * 12)
        return QSize(need.width() + self.verticalScrollBar().sizeHint().width(), height)
