"""The recommendation: the file as it is first; from a quantized file, lower types only to make
it fit (saying the errors stack); the original weights pointed to when they are here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import fit_report
from app.core.estimate.verdict import MARGIN_BYTES, MARGIN_FRACTION, Machine, judge
from app.core.formats.scan import inspect_path
from factories import make_gguf_from_hf


@pytest.fixture(scope="module")
def q8_and_original(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                    ) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("q8")
    return make_gguf_from_hf(tiny_models["llama"], folder / "tiny-llama-Q8_0.gguf",
                             "Q8_0"), tiny_models["llama"]


def machine_with_ram_for(need: int) -> Machine:
    """A CPU-only machine whose usable RAM is `need`, or a few bytes more."""
    ram = math.ceil((need + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 2
    assert Machine("t", ram).usable_ram >= need
    return Machine("t", ram)


def test_a_quantized_file_that_fits_is_kept(smollm2_gguf: Path) -> None:
    model = inspect_path(smollm2_gguf)
    report = fit_report(model, Machine.custom(None, 16), conversions=conversion_candidates(model))
    recommended = report.recommended
    assert recommended is not None and recommended.candidate.keep
    assert recommended.candidate.quant == "Q4_1" and "keep this file" in recommended.candidate.label
    assert report.candidates[0].candidate.keep  # the model as it is comes first
    assert not any("fits this target" in note for note in report.notes)
    assert report.max_context_of == model.name
    # a bigger type from a Q4_1 brings nothing back: not offered on the Fit tab
    assert "Q8_0" not in [f.candidate.quant for f in report.candidates]
    # ... but the converter offers it (the sheet lists every type that makes sense)
    assert "Q8_0" in [c.quant for c in conversion_candidates(model)]


def test_lower_types_only_to_make_it_fit(q8_and_original: tuple[Path, Path]) -> None:
    q8_path, original = q8_and_original
    model = inspect_path(q8_path)
    candidates = conversion_candidates(model)
    q4 = next(c for c in candidates if c.quant == "Q4_0")
    need = judge(q4.model, Machine("big", 64 * 1024**3), 256).estimate
    assert need is not None
    small = machine_with_ram_for(need.ram.total)
    assert judge(model, small, 256).kind == "none"  # the Q8_0 itself does not fit
    report = fit_report(model, small, 256, conversions=candidates,
                        originals=[inspect_path(original)])
    recommended = report.recommended
    assert recommended is not None and not recommended.candidate.keep
    assert recommended.candidate.requantizes
    assert any("stacks a second quantization error" in note for note in report.notes)
    assert any(str(original) in note and "original weights" in note for note in report.notes)


def test_the_original_is_found_by_shape(q8_and_original: tuple[Path, Path],
                                        tiny_models: dict[str, Path]) -> None:
    from app.core.estimate.originals import local_originals

    q8_path, original = q8_and_original
    models = [inspect_path(p) for p in (original, tiny_models["mixtral"], q8_path)]
    found = local_originals(models[2], models)
    assert [m.path for m in found] == [original]
    assert local_originals(models[0], models) == []  # an HF folder is its own original
