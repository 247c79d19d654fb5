"""Dequantization in torch: bit-identical to gguf-py for every type with a torch kernel, gguf-py's
numpy code as the (slow) fallback for the rest, and clear errors for bytes that do not fit."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from app.core.errors import FormatError, UnsupportedError
from app.core.formats.gguf_header import read_gguf_header
from app.core.quant import dequantize
from app.core.quant.codec import DEQUANTIZERS, can_dequantize, has_fast_dequantizer

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", KQUANTS + ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_reference_files_dequantize_like_gguf_py(qtype: str, kquants_reference: Path) -> None:
    reader = gguf.GGUFReader(kquants_reference / f"tiny-llama-pure-{qtype}.gguf")
    tensors = [t for t in reader.tensors if t.tensor_type.name == qtype]
    # Every 2-D weight; on tiny-llama, ffn_down (352-element rows) falls back from K-quants.
    assert len(tensors) == (26 if qtype in KQUANTS else 30)
    for tensor in tensors:
        raw = np.array(tensor.data)
        expected = quants.dequantize(raw, tensor.tensor_type)
        got = dequantize(torch.from_numpy(raw), qtype)
        assert got.dtype == torch.float32
        assert _same_bits(got.numpy(), expected), tensor.name
        # With the logical shape, the bytes are checked and the result takes that shape.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        assert tuple(dequantize(torch.from_numpy(raw), qtype, shape=shape).shape) == shape


@pytest.mark.parametrize("qtype", KQUANTS)
def test_kquants_dequantize_random_blocks_like_gguf_py(qtype: str) -> None:
    # Random bytes reach every bit pattern of the scales and quants, including negative
    # 6-bit scales and float16 scales that are subnormal, huge, inf or NaN.
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    raw = np.random.default_rng(11).integers(0, 256, (300, size), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = quants.dequantize(raw, GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(raw), qtype).numpy()
    assert got.shape == (300, block)
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(got), finite)
    assert _same_bits(np.where(finite, got, 0), np.where(finite, expected, 0))


def test_q8_k_dequantizes_as_scale_times_quants() -> None:
    # gguf-py has no Q8_K; its block is float d, int8 qs[256], int16 bsums[16].
    rng = np.random.default_rng(5)
    d = np.float32([0.125, -3.5e-3])
    qs = rng.integers(-128, 128, (2, 256)).astype(np.int8)
    bsums = qs.reshape(2, 16, 16).astype(np.int16).sum(axis=2, dtype=np.int16)
    raw = np.concatenate([d.view(np.uint8).reshape(2, 4), qs.view(np.uint8),
                          bsums.view(np.uint8)], axis=1)
    got = dequantize(torch.from_numpy(raw), "Q8_K").numpy()
    assert _same_bits(got, qs.astype(np.float32) * d[:, None])


def test_real_smollm2_tensors_dequantize_like_gguf_py(smollm2_gguf: Path) -> None:
    # The project's header reader, not GGUFReader: it skips the 49152-token vocabulary.
    header = read_gguf_header(smollm2_gguf)
    by_name = {t.name: t for t in header.tensors}
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
             "blk.0.ffn_down.weight", "blk.29.ffn_gate.weight"]
    assert {by_name[n].type_name for n in names} == {"Q8_0", "Q4_1"}
    data = np.memmap(smollm2_gguf, dtype=np.uint8, mode="r")
    for name in names:
        entry = by_name[name]
        ggml = entry.ggml_type
        block, type_size = GGML_QUANT_SIZES[ggml]
        n_rows = min(4096, entry.shape[1])  # 4096 of the embedding's 49152 rows
        row_bytes = entry.shape[0] // block * type_size
        raw = np.array(data[entry.offset:entry.offset + n_rows * row_bytes]).reshape(n_rows, -1)
        expected = quants.dequantize(raw, ggml)
        got = dequantize(torch.from_numpy(raw), entry.type_name, shape=(n_rows, entry.shape[0]))
        assert _same_bits(got.numpy(), expected), name


SLOW_PATH = ["IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "IQ2_XXS", "IQ3_S", "IQ1_M"]


@pytest.mark.parametrize("qtype", SLOW_PATH)
def test_other_types_go_through_gguf_py(qtype: str) -> None:
    assert not has_fast_dequantizer(qtype) and can_dequantize(qtype)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    raw = np.random.default_rng(2).integers(0, 256, (2, 3, 2 * size), dtype=np.uint8)
    raw[..., :] &= 0x3F  # keep float16 scales finite so that values compare exactly
    with np.errstate(all="ignore"):
        expected = quants.dequantize(raw, GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(raw), qtype)
    assert got.shape == (2, 3, 2 * block) and got.device == torch.device("cpu")
    assert _same_bits(got.numpy(), expected)


def test_every_type_gguf_py_reads_can_be_read() -> None:
    for qtype in GGMLQuantizationType:
        block, size = GGML_QUANT_SIZES[qtype]
        raw = np.zeros((1, size), dtype=np.uint8)
        try:
            with np.errstate(all="ignore"):
                quants.dequantize(raw, qtype)
        except NotImplementedError:
            if qtype.name not in DEQUANTIZERS:
                assert not can_dequantize(qtype)
                with pytest.raises(UnsupportedError, match=qtype.name):
                    dequantize(torch.from_numpy(raw), qtype)
            continue
        assert can_dequantize(qtype)
        assert dequantize(torch.from_numpy(raw), qtype).shape == (1, block)


def test_wrong_byte_counts_are_rejected() -> None:
    raw = torch.zeros(2, 35, dtype=torch.uint8)  # 35 is not a whole number of 34-byte blocks
    with pytest.raises(FormatError, match="35 bytes per row"):
        dequantize(raw, "Q8_0", tensor="blk.0.attn_q.weight")
    good = torch.zeros(4, 34, dtype=torch.uint8)
    with pytest.raises(FormatError, match=r"136 bytes cannot hold a Q8_0 tensor of shape "
                                          r"\[4, 64\], which needs 272") as caught:
        dequantize(good, "Q8_0", shape=(4, 64), tensor="blk.0.attn_q.weight")
    assert caught.value.tensor == "blk.0.attn_q.weight" and caught.value.exit_code == 2
    with pytest.raises(FormatError, match="Q4_K"):
        dequantize(torch.zeros(143, dtype=torch.uint8), "Q4_K", shape=(256,))
    with pytest.raises(TypeError, match="uint8"):
        dequantize(torch.zeros(34), "Q8_0")


def test_the_torch_free_table_of_readable_types_matches_the_dequantizers() -> None:
    from app.core.quant.readable import TORCH_DEQUANTIZED

    assert set(DEQUANTIZERS) == TORCH_DEQUANTIZED
