"""Refuse to start on a Qt binding known to corrupt the interpreter.

PySide6 6.12.0 returns from void static functions (QCoreApplication.processEvents,
QThread.msleep, QTest.qWait ...) without the reference to None it gives back. Python 3.12 and
later make None immortal, so nothing happens there; on 3.10 and 3.11 None's reference count
drains by one per call and the process dies ("deallocating None") or hangs minutes later, at
a random place. The check measures the behaviour instead of trusting a version list.
"""

from __future__ import annotations

import ctypes
import sys

PROBE_CALLS = 16


def none_refcount_drain() -> int:
    """How many references to None `PROBE_CALLS` calls of `QThread.msleep(0)` lose (0 = sound).

    The references a faulty binding loses here are given back, so probing does no harm.
    """
    from PySide6.QtCore import QThread

    msleep = QThread.msleep
    before = sys.getrefcount(None)
    for _ in range(PROBE_CALLS):
        msleep(0)
    lost = max(before - sys.getrefcount(None), 0)
    for _ in range(lost):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))
    return lost


def qt_binding_problem() -> str | None:
    """A message naming the fault and the fix, or None when the binding behaves."""
    if sys.version_info >= (3, 12):
        return None  # None is immortal: a lost reference costs nothing
    lost = none_refcount_drain()
    if lost < PROBE_CALLS // 2:  # a sound binding loses none
        return None
    import PySide6

    return (f"PySide6 {PySide6.__version__} loses a reference to None on every Qt call on "
            f"Python {sys.version_info[0]}.{sys.version_info[1]} ({lost} in "
            f"{PROBE_CALLS} calls); the window would crash within minutes. "
            "Install a sound version: pip install 'PySide6-Essentials>=6.9,<6.12' "
            "(or use Python 3.12 or later)")
