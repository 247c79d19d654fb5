"""`imatrix`: an importance matrix computed from a calibration text with transformers."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.convert import ConvertRequest, plan_conversion
from app.core.imatrix import ImatrixRequest
from app.core.jobs import RecordingReporter, run_job
from app.core.quant.imatrix_file import read_imatrix
from factories import make_hf_model

CHUNK = 32
CHUNKS = 3
WORDS = "the cat sat on a mat and dog ran far away from home in rain".split()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imatrix")
    make_hf_model(root / "llama", "llama")
    make_hf_model(root / "mixtral", "mixtral")
    rng = random.Random(0)
    (root / "calib.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(400)))
    return root


def compute(workdir: Path, family: str, target: Path,
            reporter: RecordingReporter | None = None) -> RecordingReporter:
    reporter = reporter or RecordingReporter()
    result = run_job(ImatrixRequest(workdir / family, workdir / "calib.txt", target,
                                    chunk_size=CHUNK, max_chunks=CHUNKS, use_gpu=False),
                     reporter)
    assert result.status == "done", result.error
    return reporter


@pytest.fixture(scope="module")
def llama_matrix(workdir: Path) -> Path:
    target = workdir / "llama.imatrix.gguf"
    compute(workdir, "llama", target)
    return target


def test_names_are_the_converted_gguf_block_matrices(workdir: Path, llama_matrix: Path,
                                                     tmp_path: Path) -> None:
    matrix = read_imatrix(llama_matrix)
    plan = plan_conversion(workdir / "llama", tmp_path / "out.gguf", out_type="Q4_0")
    block_matrices = {t.name for t in plan.tensors
                      if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(matrix.entries) == block_matrices
    assert (matrix.chunk_count, matrix.chunk_size) == (CHUNKS, CHUNK)
    assert matrix.datasets == (str(workdir / "calib.txt"),)
    assert {int(e.counts[0]) for e in matrix.entries.values()} == {CHUNK * CHUNKS}


def test_sums_of_squares_match_a_hand_computed_layer(workdir: Path, llama_matrix: Path) -> None:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(workdir / "llama",
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(workdir / "llama")
    ids = tokenizer((workdir / "calib.txt").read_text(), add_special_tokens=False)["input_ids"]
    seen: list[torch.Tensor] = []
    layer = model.model.layers[1]
    handle = layer.mlp.down_proj.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.inference_mode():
        for index in range(CHUNKS):
            chunk = ids[index * CHUNK:(index + 1) * CHUNK]
            if tokenizer.bos_token_id is not None:
                chunk[0] = tokenizer.bos_token_id
            model(input_ids=torch.tensor([chunk]), use_cache=False)
    handle.remove()
    inputs = torch.cat(seen).double()
    expected = (inputs * inputs).sum(dim=0).numpy()
    entry = read_imatrix(llama_matrix).entries["blk.1.ffn_down.weight"]
    np.testing.assert_allclose(entry.sums[0], expected, rtol=1e-5)
    assert entry.counts.tolist() == [CHUNK * CHUNKS]


def test_the_converter_accepts_it(workdir: Path, llama_matrix: Path, tmp_path: Path) -> None:
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(workdir / "llama", tmp_path / "out.gguf", "Q4_0",
                                    device="cpu", imatrix=llama_matrix), reporter)
    assert result.status == "done", result.error
    assert "output.weight: not in the importance matrix, quantized without it" in (
        reporter.messages("info"))
    assert any("weights 14 of 16 quantized tensors" in m for m in reporter.messages("info"))


def test_moe_counts_are_per_expert_and_convert(workdir: Path, tmp_path: Path) -> None:
    target = tmp_path / "mixtral.imatrix.gguf"
    compute(workdir, "mixtral", target)
    matrix = read_imatrix(target)
    gate = matrix.entries["blk.0.ffn_gate_exps.weight"]
    down = matrix.entries["blk.0.ffn_down_exps.weight"]
    assert gate.sums.shape[0] == down.sums.shape[0] == 4
    # Every token goes to two experts; each expert counts the tokens routed to it.
    assert gate.counts.sum() == 2 * CHUNK * CHUNKS
    assert np.array_equal(gate.counts, down.counts)
    assert np.array_equal(gate.sums, matrix.entries["blk.0.ffn_up_exps.weight"].sums)
    plan = plan_conversion(workdir / "mixtral", tmp_path / "out.gguf", out_type="Q4_0",
                           imatrix=target)
    assert plan.importance is not None
    assert "blk.0.ffn_down_exps.weight" in plan.importance.covered


def test_cancel_leaves_no_output(workdir: Path, tmp_path: Path) -> None:
    class CancelAfterFirstChunk(RecordingReporter):
        def progress(self, done: float, total: float, text: str = "") -> None:
            super().progress(done, total, text)
            self.token.cancel()

    target = tmp_path / "cancelled.gguf"
    result = run_job(ImatrixRequest(workdir / "llama", workdir / "calib.txt", target,
                                    chunk_size=CHUNK, use_gpu=False), CancelAfterFirstChunk())
    assert result.status == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_a_text_shorter_than_a_chunk_is_bad_input(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "short.txt").write_text("the cat sat")
    run = subprocess.run([sys.executable, "-m", "app", "imatrix", str(workdir / "llama"),
                          "--text", str(tmp_path / "short.txt"), "-o",
                          str(tmp_path / "m.gguf"), "--cpu"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 2, run.stderr
    assert "fewer than one chunk of 512" in run.stderr
    assert not (tmp_path / "m.gguf").exists()
