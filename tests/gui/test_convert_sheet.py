"""The convert sheet guides: every sensible type, grouped and explained; the recommendation
(or "keep this file") said in the window; no control disabled without a reason; a long plan
never squeezes the type buttons."""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from pathlib import Path

import pytest

from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.verdict import (
    MARGIN_BYTES,
    MARGIN_FRACTION,
    Candidate,
    Machine,
    judge,
    recommend,
)
from app.core.formats.model_info import ModelInfo
from app.core.formats.scan import inspect_path
from app.gui.convert_dialog import ConvertDialog
from factories import make_gguf_from_hf


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> ModelInfo:
    return inspect_path(smollm2_gguf)


@functools.lru_cache(maxsize=4)
def candidates_of(model: ModelInfo) -> tuple[Candidate, ...]:
    """Planning every type for SmolLM2 takes seconds: once per model for the module."""
    return tuple(conversion_candidates(model))


def open_sheet(qtbot, model: ModelInfo, ram_gib: float = 16,  # type: ignore[no-untyped-def]
               preselect: str | None = None) -> ConvertDialog:
    dialog = ConvertDialog(model, preselect)
    qtbot.addWidget(dialog)
    dialog.show()
    fits = recommend(candidates_of(model), Machine.custom(None, ram_gib), 4096)
    dialog.show_estimates(fits)
    return dialog


def buttons(dialog: ConvertDialog) -> dict[str, object]:
    return {b.property("quant"): b for b in dialog.types.buttons()}


def test_a_quantized_file_that_fits_is_not_converted_by_default(qtbot, smollm2: ModelInfo
                                                               ) -> None:
    dialog = open_sheet(qtbot, smollm2)
    offered = buttons(dialog)
    # bigger types from a GGUF are offered too, each with its bits per weight
    assert {"F16", "Q8_0", "Q4_0", "Q4_K_M"} <= set(offered)
    assert "Q4_1" not in offered  # the same type again is the file itself
    assert "bpw" in offered["Q8_0"].text() and "MiB" in offered["Q8_0"].text()
    assert dialog.selected_type() is None and not dialog.start.isEnabled()
    assert "already fits" in dialog.advice.text() and dialog.advice.isVisible()
    assert dialog.start_reason.text() == "Choose a type above to start."
    assert "estimating" not in dialog.summary.text().lower()
    offered["Q8_0"].click()
    assert "No quality comes back" in dialog.type_note.text()
    assert dialog.output.text().endswith("-Q8_0.gguf")


def test_every_disabled_type_is_explained_in_the_window(qtbot, smollm2: ModelInfo) -> None:
    dialog = open_sheet(qtbot, smollm2)
    grey = [q for q, b in buttons(dialog).items() if not b.isEnabled()]
    for quant in grey:
        assert quant in dialog.advice.text()
        assert "can't write" in buttons(dialog)[quant].text()


def test_a_fresh_q4_0_can_still_be_converted(qtbot, tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    q4 = inspect_path(make_gguf_from_hf(tiny_models["llama"], tmp_path / "tiny-Q4_0.gguf",
                                        "Q4_0"))
    dialog = open_sheet(qtbot, q4)
    enabled = [q for q, b in buttons(dialog).items() if b.isEnabled()]
    assert {"Q8_0", "F16"} <= set(enabled)
    buttons(dialog)["Q8_0"].click()
    assert dialog.output.text().endswith(".gguf")
    assert dialog.start_reason.text() == "Checking the plan…"


def test_a_needed_requantization_says_the_errors_stack(qtbot, smollm2: ModelInfo) -> None:
    candidates = candidates_of(smollm2)
    q4_0 = next(c for c in candidates if c.quant == "Q4_0")
    need = judge(q4_0.model, Machine("big", 64 * 1024**3), 4096).estimate.ram.total
    # RAM for the Q4_0, a few MiB short of the Q4_1 as it is
    ram = math.ceil((need + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 2
    fits = recommend(candidates, Machine("small", ram), 4096)
    assert not next(f for f in fits if f.candidate.keep).recommended
    dialog = ConvertDialog(smollm2)
    qtbot.addWidget(dialog)
    dialog.show_estimates(fits)
    assert "stacks a second error" in dialog.advice.text()
    assert dialog.selected_type() is not None


def test_a_long_plan_never_squeezes_the_type_buttons(qtbot, smollm2: ModelInfo) -> None:
    dialog = open_sheet(qtbot, smollm2, preselect="Q4_0")
    request = dialog.request()
    assert request is not None
    plan = request.plan()
    warnings = tuple(f"tensor blk.{i}.ffn_down.weight: a long warning that wraps over the "
                     "width of the sheet and goes on to say what the user should do" for i in
                     range(12))
    dialog.show_plan(request, replace(plan, warnings=warnings), None, 10 * 1024**3)
    assert "Writes" in dialog.summary.text() and dialog.start.isEnabled()
    dialog.adjustSize()
    qtbot.wait(10)
    for button in dialog.types.buttons():
        assert button.height() >= button.sizeHint().height(), button.property("quant")
    assert dialog.start.height() >= dialog.start.sizeHint().height()
