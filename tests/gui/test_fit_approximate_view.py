"""The window flags an estimate approximate when the estimator does not know the architecture,
for a GGUF and a Hugging Face folder: in the Fit column's tooltip and in the Fit tab's notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gui_helpers import open_window, settle
from PySide6.QtCore import Qt

from app.gui.main_window import MainWindow
from app.gui.models_table import COLUMN_INDEX
from app.gui.settings import AppSettings
from factories import make_gguf, make_hf_model

NOTE = "architecture 'somethingnew' is unknown to the estimator"


@pytest.fixture()
def odd_models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    make_gguf(folder / "odd.gguf", arch="somethingnew")
    hf = make_hf_model(folder / "hf-odd", "llama")
    config = json.loads((hf / "config.json").read_text())
    config.update(model_type="somethingnew", architectures=["SomethingNewForCausalLM"])
    (hf / "config.json").write_text(json.dumps(config))
    make_gguf(folder / "plain.gguf")
    return folder


def test_unknown_architecture_is_flagged_approximate(qtbot, settings: AppSettings,  # type: ignore[no-untyped-def]
                                                     odd_models: Path) -> None:
    window: MainWindow = open_window(qtbot, settings, odd_models)
    rows = {window.proxy.index(r, 0).data(): r for r in range(window.proxy.rowCount())}
    fit = COLUMN_INDEX["Fit"]
    plain = window.proxy.index(rows["plain"], fit).data(Qt.ItemDataRole.ToolTipRole)
    assert "unknown to the estimator" not in plain
    for name, path in (("odd", odd_models / "odd.gguf"), ("hf-odd", odd_models / "hf-odd")):
        tooltip = window.proxy.index(rows[name], fit).data(Qt.ItemDataRole.ToolTipRole)
        assert f"approximate: {NOTE}" in tooltip, name
        assert window.select_model_path(path)
        settle(qtbot, window)
        assert NOTE in window.details.fit.notes.text(), name
