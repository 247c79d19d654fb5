"""`fit --vram` and `convert --fit-gpu --vram` read the GPU budget through one function: the
same refusal, in the same words, with the same exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("vram", ["0", "-3.5"])
def test_a_nonsense_vram_is_refused_alike_by_fit_and_convert(
        vram: str, tiny_ggufs: dict[str, Path], tiny_models: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    fit = refusal(["fit", str(tiny_ggufs["dense"]), "--vram", vram], capsys)
    convert = refusal(["convert", str(tiny_models["llama"]), "-o", str(tmp_path / "out.gguf"),
                       "--type", "Q8_0", "--fit-gpu", "--vram", vram], capsys)
    assert fit == convert
    code, message = fit
    assert code == 2
    assert message == (f"modelyard: the target's VRAM must be more than 0 GiB, not "
                       f"{float(vram)} (--vram)")
    assert not (tmp_path / "out.gguf").exists()


def test_convert_fits_the_gpu_that_vram_describes() -> None:
    import argparse

    from app.cli.convert import _fit_gpu_vram

    assert _fit_gpu_vram(argparse.Namespace(vram=1.5)) == int(1.5 * 2**30)
