"""Requantization against llama.cpp's own quantizations of generated models."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from app.core.convert import ConvertRequest
from app.core.jobs import RecordingReporter, run_job
from reference_models import ReferenceFiles


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def requantize(source: Path, target: Path, out_type: str, pure: bool) -> dict[str, tuple[str,
                                                                                         bytes]]:
    result = run_job(ConvertRequest(source, target, out_type, device="cpu", pure=pure),
                     RecordingReporter())
    assert result.status == "done", result.error
    return tensors_of(target)


@pytest.mark.parametrize("out_type", ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1",
                                      "Q4_0", "Q3_K", "Q2_K"])
def test_pure_requantization_equals_llama_quantize(kquants_reference: Path, tmp_path: Path,
                                                   out_type: str) -> None:
    ours = requantize(kquants_reference / "tiny-llama-F32.gguf", tmp_path / "out.gguf",
                      out_type, pure=True)
    assert ours == tensors_of(kquants_reference / f"tiny-llama-pure-{out_type}.gguf")


def test_q6_k_mix_equals_llama_quantize(kquants_reference: Path, tmp_path: Path) -> None:
    ours = requantize(kquants_reference / "tiny-llama-F32.gguf", tmp_path / "out.gguf", "Q6_K",
                      pure=False)
    assert ours == tensors_of(kquants_reference / "tiny-llama-Q6_K.gguf")


def llama_quantize(source: Path, target: Path, ftype: str, pure: bool) -> dict[str, tuple[str,
                                                                                       bytes]]:
    """What llama-quantize writes, from llama-cpp-python's binding of the same function."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python makes the reference")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.pure = pure
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                          ctypes.byref(params)) == 0
    return tensors_of(target)


def test_q6_k_mix_differs_from_pure_and_equals_llama_quantize(tmp_path: Path) -> None:
    """On an 8-expert model llama-quantize's Q6_K mix keeps attn_k and attn_v at Q8_0, so its
    file differs from pure Q6_K: the mix's rules, not only the type, are checked."""
    from factories import make_gguf

    source = make_gguf(tmp_path / "moe8.gguf", n_experts=8, n_embd=256, n_ff=256, n_layers=2,
                       n_vocab=256, n_head=4, n_head_kv=1)
    reference = llama_quantize(source, tmp_path / "mix.gguf", "Q6_K", pure=False)
    pure = llama_quantize(source, tmp_path / "pure.gguf", "Q6_K", pure=True)
    assert reference["blk.0.attn_v.weight"][0] == "Q8_0" != pure["blk.0.attn_v.weight"][0]
    ours = requantize(source, tmp_path / "ours.gguf", "Q6_K", pure=False)
    assert ours == reference


def test_legacy_target_gives_the_output_tensor_q6_k(kquants_reference: Path,
                                                    tmp_path: Path) -> None:
    """llama-quantize's Q4_0 keeps the output tensor at Q6_K; everything else is Q4_0."""
    ours = requantize(kquants_reference / "tiny-llama-F32.gguf", tmp_path / "out.gguf", "Q4_0",
                      pure=False)
    pure_q4 = tensors_of(kquants_reference / "tiny-llama-pure-Q4_0.gguf")
    pure_q6 = tensors_of(kquants_reference / "tiny-llama-pure-Q6_K.gguf")
    assert ours["output.weight"] == pure_q6["output.weight"]
    assert {n: v for n, v in ours.items() if n != "output.weight"} == {
        n: v for n, v in pure_q4.items() if n != "output.weight"}


MIXES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


@pytest.mark.parametrize("mix", MIXES)
def test_k_mixes_equal_llama_quantize(mix: str, reference_files: ReferenceFiles,
                                      tmp_path: Path) -> None:
    """Types and bytes of every tensor, on 352-element rows that fall back (tiny-llama)."""
    ours = requantize(reference_files.source("tiny-llama"), tmp_path / "out.gguf", mix,
                      pure=False)
    assert_same_tensors(ours, tensors_of(reference_files.mix("tiny-llama", mix)))


@pytest.mark.parametrize("model,mix", [("tiny-gqa", "Q2_K"), ("tiny-gqa", "Q3_K_M"),
                                       ("tiny-gqa", "Q4_K_M"), ("tiny-gqa", "Q4_K_S"),
                                       ("tiny-moe", "Q4_K_M"), ("tiny-moe", "Q3_K_S")])
def test_k_mixes_of_other_shapes_equal_llama_quantize(model: str, mix: str,
                                                      reference_files: ReferenceFiles,
                                                      tmp_path: Path) -> None:
    """16 layers with GQA 4 and tied embeddings; 8 experts: other rules pick other types."""
    ours = requantize(reference_files.source(model), tmp_path / "out.gguf", mix, pure=False)
    assert_same_tensors(ours, tensors_of(reference_files.mix(model, mix)))


def assert_same_tensors(ours: dict[str, tuple[str, bytes]],
                        theirs: dict[str, tuple[str, bytes]]) -> None:
    assert {n: t for n, (t, _) in ours.items()} == {n: t for n, (t, _) in theirs.items()}
    differing = [name for name in theirs if ours[name][1] != theirs[name][1]]
    assert differing == []


def test_nan_weights_stop_the_job_naming_the_tensor(tmp_path: Path) -> None:
    from factories import make_gguf

    made: list[tuple[int, ...]] = []

    def with_nan(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        values = rng.standard_normal(shape).astype(np.float32) * 0.02
        made.append(shape)
        if len(made) == 2:  # after token_embd: blk.0.attn_q
            values[7, 9] = np.nan
        return values

    source = make_gguf(tmp_path / "nan.gguf", n_embd=256, n_ff=512, n_layers=1,
                       weight_maker=with_nan)
    out = tmp_path / "out.gguf"
    result = run_job(ConvertRequest(source, out, "Q4_K_M", device="cpu"), RecordingReporter())
    assert result.status == "failed"
    assert "blk.0.attn_q.weight" in str(result.error) and "nan" in str(result.error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.gguf"]
