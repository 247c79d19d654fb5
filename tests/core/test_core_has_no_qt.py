"""app/core must run without Qt: importing every core module loads no Qt binding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import app.core

QT_MODULES = ("PySide6", "shiboken6", "PyQt5", "PyQt6", "qtpy")


def test_importing_every_core_module_loads_no_qt() -> None:
    code = f"""
import importlib, pkgutil, sys
import app.core
names = [m.name for m in pkgutil.walk_packages(app.core.__path__, "app.core.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {QT_MODULES!r})
print(len(names), loaded)
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    n_modules = int(result.stdout.split()[0])
    assert n_modules >= 8


def test_no_core_source_mentions_a_qt_import() -> None:
    root = Path(app.core.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py")
                 if any(line.lstrip().startswith((f"import {q}", f"from {q}"))
                        for line in p.read_text().splitlines() for q in QT_MODULES)]
    assert offenders == []
