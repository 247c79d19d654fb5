"""Tell the user a long job ended while they were looking at another window: a system
notification through the tray when there is one, and the taskbar's attention hint always."""

from __future__ import annotations

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

# A job shorter than this ends while the user still waits for it: no notification.
NOTIFY_AFTER_SECONDS = 5.0


class Notifier:
    def __init__(self, window: QWidget) -> None:
        self.window = window
        self.sent: list[tuple[str, str]] = []  # what was said, newest last
        self._tray: QSystemTrayIcon | None = None

    def should_notify(self, seconds: float | None) -> bool:
        return (seconds is not None and seconds >= NOTIFY_AFTER_SECONDS
                and not self.window.isActiveWindow())

    def notify(self, title: str, text: str, failed: bool = False) -> None:
        self.sent.append((title, text))
        if QSystemTrayIcon.isSystemTrayAvailable():
            if self._tray is None:
                icon = self.window.windowIcon()
                self._tray = QSystemTrayIcon(icon if not icon.isNull() else QIcon(), self.window)
                self._tray.show()
            kind = (QSystemTrayIcon.MessageIcon.Warning if failed
                    else QSystemTrayIcon.MessageIcon.Information)
            self._tray.showMessage(title, text, kind, 8000)
        QApplication.alert(self.window)
