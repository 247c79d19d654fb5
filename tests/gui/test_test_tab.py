"""The Test tab (streamed generation, compare with a KL plot) and the doctor in Problems."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from gui_helpers import open_window, settle

from app.gui.main_window import MainWindow
from app.gui.settings import AppSettings
from factories import drop_tensors

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


@pytest.fixture()
def window(qtbot, settings: AppSettings, tmp_path: Path, tiny_models: dict[str, Path],  # type: ignore[no-untyped-def]
           tiny_llama_ggufs: dict[str, Path]) -> MainWindow:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(tiny_models["llama"], folder / "tiny-llama")
    for qtype in ("F32", "Q4_0"):
        shutil.copy(tiny_llama_ggufs[qtype], folder / f"tiny-llama-{qtype}.gguf")
    broken = shutil.copytree(tiny_models["llama"], folder / "tiny-llama-merged-badly")
    drop_tensors(broken / "model.safetensors", ["model.layers.1.input_layernorm.weight",
                                                "model.layers.1.self_attn.q_proj.weight"])
    return open_window(qtbot, settings, folder)



def test_generation_streams_into_the_tab(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama")
    panel = window.details.test.generate
    panel.max_tokens.setValue(12)
    pieces: list[str] = []
    panel.relay.text.connect(pieces.append)
    panel.run_button.click()
    settle(qtbot, window)  # the fit check, then the job
    assert [r.state for r in window.queue.jobs.values()
            if r.title.startswith("Test generation")] == ["done"]
    assert pieces and panel.output.toPlainText() == "".join(pieces)
    assert "transformers on cpu" in panel.stats.text() and "tok/s" in panel.stats.text()
    assert panel.run_button.isEnabled() and not panel.stop_button.isEnabled()


def test_stop_cancels_the_generation(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama")
    panel = window.details.test.generate
    panel.max_tokens.setValue(4000)
    panel.relay.text.connect(lambda _piece: panel.stop())
    panel.run_button.click()
    settle(qtbot, window)
    assert panel.stats.text().startswith("<b style='color:#d64541'>cancelled")
    assert len(panel.output.toPlainText()) < 200


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_compare_a_quantized_gguf_with_its_source(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama-Q4_0.gguf")
    panel = window.details.test.compare
    panel.remember_source(folder / "tiny-llama-Q4_0.gguf", folder / "tiny-llama")
    panel.show_model(window.selected_model())
    assert panel.reference.currentData() == str(folder / "tiny-llama")
    panel.run_button.click()
    settle(qtbot, window, timeout=120000)
    assert panel.numbers["n_tokens"].text() != "–"
    assert float(panel.numbers["kl_mean"].text()) > 0
    assert panel.plot.values and len(panel.plot.values) == int(
        panel.numbers["n_tokens"].text().replace(",", ""))
    assert "top-1" in panel.verdict.text()


def test_doctor_names_the_dropped_tensors(qtbot, window: MainWindow) -> None:
    folder = window.settings.folders()[0]
    assert window.select_model_path(folder / "tiny-llama-merged-badly")
    problems = window.details.problems
    problems.doctor_button.click()
    settle(qtbot, window)
    texts = "\n".join(problems.list.item(i).text() for i in range(problems.list.count()))
    assert "model.layers.1.input_layernorm.weight" in texts
    assert "model.layers.1.self_attn.q_proj.weight" in texts
    assert problems.doctor_status.text().startswith("Doctor:")


def test_compare_shows_the_noise_floor(qtbot, window: MainWindow) -> None:
    from app.core.generate.compare import CompareResult

    panel = window.details.test.compare
    assert "Noise floor" not in panel.noise_floor.text()
    panel.show_result(CompareResult(
        ppl_ref=5.0, ppl_candidate=5.1, kl_mean=0.01, kl_p99=0.05, top1_agreement=0.97,
        n_tokens=3, per_token_kl=(0.01, 0.02, 0.0), verdict="close", reference="a",
        candidate="b", ref_backend="transformers", candidate_backend="llama.cpp",
        text_source="sample", window_tokens=3, n_windows=1, peak_bytes=0,
        reference_dtype="bfloat16", noise_floor=1e-3))
    assert "KL 1e-03" in panel.noise_floor.text()
    assert "bfloat16" in panel.noise_floor.text()
