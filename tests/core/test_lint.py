"""ruff and the import contracts (pyproject.toml) run with the tests: a file that breaks the
style or an import that crosses a layer fails the suite, not a later review."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import app

ROOT = Path(app.__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)


def test_ruff_finds_nothing() -> None:
    pytest.importorskip("ruff", reason="ruff is in the test extra")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "app",
                             "tests"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    result = _run("import sys; from importlinter.cli import lint_imports; "
                  "sys.exit(lint_imports(no_cache=True, no_logo=True))")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_a_broken_contract_is_caught(tmp_path: Path) -> None:
    """The contracts can fail: a core module that imports Qt breaks the first one."""
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    package = tmp_path / "app"
    (package / "core").mkdir(parents=True)
    (package / "gui").mkdir()
    (package / "cli").mkdir()
    for init in ("__init__.py", "core/__init__.py", "gui/__init__.py", "cli/__init__.py"):
        (package / init).write_text("")
    (package / "core" / "bad.py").write_text("import PySide6\n")
    config = tmp_path / "contracts.toml"
    section = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]\n", 1)[1]
    settings, first_contract = section.split("[[tool.importlinter.contracts]]")[:2]
    config.write_text("[tool.importlinter]\n" + settings + "[[tool.importlinter.contracts]]"
                      + first_contract)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[2], no_cache=True, no_logo=True))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(config)],
                            capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode != 0
    assert "The core imports no Qt, and neither front end BROKEN" in result.stdout
