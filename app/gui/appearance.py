"""The look: Fusion with a light or dark palette that follows the system's colour scheme, the
style sheet and the action icons from resources/."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from app.resource_files import resource_path

ACCENT = "#1f6feb"


def palette_for(scheme: Qt.ColorScheme) -> QPalette:
    """Fusion's own light palette, or a dark one with the same roles filled in."""
    palette = QApplication.style().standardPalette() if QApplication.instance() else QPalette()
    if scheme != Qt.ColorScheme.Dark:
        palette.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
        return palette
    colors = {
        QPalette.ColorRole.Window: "#202124", QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a", QPalette.ColorRole.AlternateBase: "#26282b",
        QPalette.ColorRole.ToolTipBase: "#2d2f33", QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.Text: "#e8eaed", QPalette.ColorRole.Button: "#2d2f33",
        QPalette.ColorRole.ButtonText: "#e8eaed", QPalette.ColorRole.BrightText: "#ff6b6b",
        QPalette.ColorRole.Highlight: ACCENT, QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#8ab4f8", QPalette.ColorRole.PlaceholderText: "#9aa0a6",
        QPalette.ColorRole.Mid: "#3c4043", QPalette.ColorRole.Dark: "#111214",
        QPalette.ColorRole.Light: "#3c4043", QPalette.ColorRole.Shadow: "#000000",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text,
                 QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6f7378"))
    return palette


def apply_appearance(app: QApplication) -> None:
    """Fusion, the palette of the system's scheme (again whenever it changes), the style."""
    app.setStyle("Fusion")
    hints = QGuiApplication.styleHints()

    def follow(scheme: Qt.ColorScheme) -> None:
        app.setPalette(palette_for(scheme))

    follow(hints.colorScheme())
    hints.colorSchemeChanged.connect(follow)
    sheet = resource_path("style.qss")
    if sheet.is_file():
        app.setStyleSheet(sheet.read_text(encoding="utf-8"))


def action_icon(name: str) -> QIcon:
    """resources/icons/NAME.svg; an empty icon when it is missing (the text still shows)."""
    path = resource_path("icons", f"{name}.svg")
    return QIcon(str(path)) if path.is_file() else QIcon()
