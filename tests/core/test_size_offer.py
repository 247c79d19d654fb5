"""The Fit tab's offer: when Q4_K_M does not fit, the largest custom mix that does."""

from __future__ import annotations

import math
from pathlib import Path

from app.core.estimate.candidates import conversion_candidates
from app.core.estimate.report import fit_report
from app.core.estimate.verdict import MARGIN_BYTES, MARGIN_FRACTION, Machine, judge
from app.core.formats.scan import inspect_path
from app.core.quant.size_target import parse_size
from factories import make_gguf

CONTEXT = 512


def ram_for(need: int) -> int:
    """Machine RAM whose usable part is `need` bytes."""
    return math.ceil((need + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1


def test_q4_k_m_short_of_room_gets_a_custom_mix_between(tmp_path: Path) -> None:
    model = inspect_path(make_gguf(tmp_path / "m.gguf", n_layers=4, n_embd=256, n_ff=512,
                                   n_vocab=512))
    candidates = conversion_candidates(model)
    by_quant = {c.quant: c for c in candidates}
    big = Machine("big", 64 * 2**30)
    need = {q: judge(by_quant[q].model, big, CONTEXT).estimate.ram.total
            for q in ("Q4_K_M", "Q4_0", "Q3_K_L")}
    assert need["Q3_K_L"] < need["Q4_0"] < need["Q4_K_M"]
    # Q3_K_L fits with room to spare; the next standard type up (Q4_0) does not.
    target = Machine("small", ram_for((need["Q3_K_L"] + 4 * need["Q4_0"]) // 5))
    report = fit_report(model, target, CONTEXT, conversions=candidates)
    offer = report.size_offer
    assert offer is not None
    assert offer.preferred == "Q4_K_M" and offer.below == "Q3_K_L"
    assert report.recommended.candidate.quant == "Q3_K_L"
    assert offer.text.startswith("Q4_K_M does not fit; a ") and offer.text.endswith(
        " custom mix does")
    assert offer.size_bytes == parse_size(offer.size_text)
    q3, q4 = by_quant[offer.below].model.file_size, by_quant["Q4_K_M"].model.file_size
    assert q3 < offer.size_bytes < q4
    assert offer.verdict.kind == "ram"
    assert report.to_json()["size_offer"]["size_bytes"] == offer.size_bytes
    # Where Q4_K_M fits, or where nothing fits, there is no offer.
    assert fit_report(model, big, CONTEXT, conversions=candidates).size_offer is None
    assert fit_report(model, Machine("tiny", 2**20), CONTEXT,
                      conversions=candidates).size_offer is None
    # The converter's size target makes a file of that size, and it fits as offered.
    from app.core.convert import ConvertRequest
    from app.core.jobs import RecordingReporter, run_job

    result = run_job(ConvertRequest(model.path, tmp_path / "custom.gguf", "Q4_K_M",
                                    device="cpu", target_size=offer.size_bytes),
                     RecordingReporter())
    assert result.status == "done", result.error
    written = inspect_path(tmp_path / "custom.gguf")
    assert q3 < written.file_size <= offer.size_bytes
    assert judge(written, target, CONTEXT).kind == "ram"


def test_fit_prints_the_offer_as_convert_options(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = make_gguf(tmp_path / "m.gguf", n_layers=4, n_embd=256, n_ff=512, n_vocab=512)
    model = inspect_path(path)
    by_quant = {c.quant: c for c in conversion_candidates(model)}
    big = Machine("big", 64 * 2**30)
    q3, q4_0 = (judge(by_quant[q].model, big, CONTEXT).estimate.ram.total
                for q in ("Q3_K_L", "Q4_0"))
    ram = ram_for((q3 + 4 * q4_0) // 5)
    result = subprocess.run([sys.executable, "-m", "app", "fit", str(path), "--cpu-only",
                             "--ram", repr(ram / 2**30), "--ctx", str(CONTEXT)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "custom mix does" in line)
    assert line.startswith("Q4_K_M does not fit; a ")
    size = line.rsplit("--target-size ", 1)[1]
    assert "--type Q4_K_M" in line and parse_size(size) > by_quant["Q3_K_L"].model.file_size
