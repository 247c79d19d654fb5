"""The installed Qt binding keeps Python's reference counts intact (see app/gui/qt_check.py)."""

from __future__ import annotations

import sys

from PySide6.QtCore import QCoreApplication, QThread

from app.gui.qt_check import PROBE_CALLS, none_refcount_drain, qt_binding_problem


def test_qt_calls_do_not_drain_none(qapp) -> None:  # type: ignore[no-untyped-def]
    before = sys.getrefcount(None)
    for _ in range(1000):
        QCoreApplication.processEvents()
        QThread.msleep(0)
    assert before - sys.getrefcount(None) < 100
    assert none_refcount_drain() < PROBE_CALLS // 2
    assert qt_binding_problem() is None


def test_the_window_refuses_a_faulty_binding(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from app.gui import application, qt_check

    monkeypatch.setattr(sys, "version_info", (3, 11, 7, "final", 0))
    monkeypatch.setattr(qt_check, "none_refcount_drain", lambda: PROBE_CALLS)
    assert application.run_gui() == 2
    error = capsys.readouterr().err
    assert error.startswith("modelyard: PySide6 ") and "PySide6-Essentials>=6.9,<6.12" in error
