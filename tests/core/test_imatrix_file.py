"""Reading, checking and writing importance matrices in llama.cpp's GGUF and .dat formats."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from app.core.errors import FormatError, UnsupportedError
from app.core.quant.imatrix_file import (
    check_against_model,
    read_imatrix,
    resolve_weights,
    write_imatrix,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "imatrix"
MODEL = {"token_embd.weight": (256, 1), "blk.0.attn_k.weight": (256, 1),
         "blk.0.attn_v.weight": (256, 1), "blk.0.ffn_down.weight": (512, 1),
         "blk.1.attn_v.weight": (256, 1), "blk.1.ffn_down.weight": (512, 1),
         "output.weight": (256, 1)}


def test_reads_llama_cpp_gguf_format() -> None:
    matrix = read_imatrix(DATA / "imatrix.gguf")
    assert sorted(matrix.entries) == sorted(set(MODEL) - {"token_embd.weight"})
    assert (matrix.datasets, matrix.chunk_count, matrix.chunk_size) == (
        ("synthetic-reference",), 10, 512)
    entry = matrix.entries["blk.1.ffn_down.weight"]
    assert entry.sums.shape == (1, 512) and entry.counts.tolist() == [5120]
    # llama-quantize's weights: in_sum2 / counts in float32.
    assert np.array_equal(entry.weights(), entry.sums / np.float32(5120))


def test_gguf_round_trip_with_experts_and_an_unused_expert(tmp_path: Path) -> None:
    sums = {"blk.0.ffn_up_exps.weight": np.arange(12, dtype=np.float32).reshape(3, 4) + 1,
            "blk.0.attn_q.weight": np.full((1, 4), 8, dtype=np.float32)}
    counts = {"blk.0.ffn_up_exps.weight": np.array([2, 0, 4]),
              "blk.0.attn_q.weight": np.array([4])}
    write_imatrix(tmp_path / "m.gguf", sums, counts, datasets=["calib.txt"], chunk_count=3,
                  chunk_size=64)
    matrix = read_imatrix(tmp_path / "m.gguf")
    assert (matrix.datasets, matrix.chunk_count, matrix.chunk_size) == (("calib.txt",), 3, 64)
    weights = matrix.entries["blk.0.ffn_up_exps.weight"].weights()
    assert weights[0].tolist() == [0.5, 1.0, 1.5, 2.0]
    assert weights[1].tolist() == [1.0] * 4  # never routed to: weight 1, as llama.cpp
    assert weights[2].tolist() == [9 / 4, 10 / 4, 11 / 4, 12 / 4]
    assert matrix.weights("blk.0.attn_q.weight").tolist() == [[2.0] * 4]


def write_dat(path: Path, entries: dict[str, tuple[int, list[float]]], tail: bytes = b"") -> None:
    data = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        raw = name.encode()
        data += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, len(values))
        data += np.asarray(values, dtype="<f4").tobytes()
    path.write_bytes(data + tail)


def test_reads_the_legacy_dat_format(tmp_path: Path) -> None:
    dataset = b"wiki.train.raw"
    write_dat(tmp_path / "m.dat", {"blk.0.attn_q.weight": (4, [4.0, 8.0]),
                                   "blk.0.attn_k.weight": (0, [3.0, 5.0])},
              struct.pack("<ii", 40, len(dataset)) + dataset)
    matrix = read_imatrix(tmp_path / "m.dat")
    assert matrix.legacy and matrix.chunk_count == 40 and matrix.datasets == ("wiki.train.raw",)
    assert matrix.weights("blk.0.attn_q.weight").tolist() == [[1.0, 2.0]]
    assert matrix.weights("blk.0.attn_k.weight").tolist() == [[3.0, 5.0]]  # ncall 0: as is


@pytest.mark.parametrize("damage", ["truncated", "huge_count", "huge_name", "empty", "garbage",
                                    "gguf_truncated", "gguf_without_pairs", "non_finite"])
def test_corrupt_files_are_a_format_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad.imatrix"
    if damage == "truncated":
        write_dat(path, {"blk.0.attn_q.weight": (1, [1.0] * 64)})
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "huge_count":
        path.write_bytes(struct.pack("<i", 2**30) + b"\0" * 64)
    elif damage == "huge_name":
        path.write_bytes(struct.pack("<ii", 1, 2**30) + b"\0" * 64)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 100)
    elif damage == "gguf_truncated":
        path.write_bytes((DATA / "imatrix.gguf").read_bytes()[:-100])
    elif damage == "gguf_without_pairs":
        write_imatrix(path, {"a.weight": np.ones((1, 4), np.float32)}, {"a.weight": [1]},
                      datasets=[], chunk_count=1, chunk_size=1)
        data = path.read_bytes().replace(b"a.weight.counts", b"a.weight.coun_s")
        path.write_bytes(data)
    elif damage == "non_finite":
        write_dat(path, {"blk.0.attn_q.weight": (1, [1.0, float("nan")])})
    with pytest.raises(FormatError) as error:
        read_imatrix(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_imatrix(tmp_path / "nothing.gguf")


def test_matrix_for_this_model_reports_what_it_covers() -> None:
    covered, uncovered = check_against_model(read_imatrix(DATA / "imatrix.gguf"), MODEL)
    assert uncovered == ["token_embd.weight"]
    assert len(covered) == 6


def test_matrix_for_another_model_is_refused_with_the_names() -> None:
    matrix = read_imatrix(DATA / "imatrix.gguf")
    fewer_layers = {k: v for k, v in MODEL.items() if not k.startswith("blk.1.")}
    with pytest.raises(UnsupportedError, match="another model.*blk.1.ffn_down.weight"):
        check_against_model(matrix, fewer_layers)
    wider = {**MODEL, "blk.0.attn_v.weight": (512, 1)}
    with pytest.raises(UnsupportedError, match="sizes differ.*blk.0.attn_v.weight: 256 values"):
        check_against_model(matrix, wider)


def test_per_expert_entries_fit_a_stacked_tensor_and_back(tmp_path: Path) -> None:
    rows = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    write_imatrix(tmp_path / "split.gguf", {f"blk.0.ffn_up.{e}.weight": rows[e:e + 1]
                                            for e in range(2)},
                  {f"blk.0.ffn_up.{e}.weight": [2] for e in range(2)}, datasets=[],
                  chunk_count=1, chunk_size=1)
    stacked_model = {"blk.0.ffn_up_exps.weight": (4, 2)}
    resolved = resolve_weights(read_imatrix(tmp_path / "split.gguf"), stacked_model)
    assert np.array_equal(resolved["blk.0.ffn_up_exps.weight"], rows / 2)
    write_imatrix(tmp_path / "stacked.gguf", {"blk.0.ffn_up_exps.weight": rows},
                  {"blk.0.ffn_up_exps.weight": [2, 4]}, datasets=[], chunk_count=1,
                  chunk_size=1)
    split_model = {f"blk.0.ffn_up.{e}.weight": (4, 1) for e in range(2)}
    resolved = resolve_weights(read_imatrix(tmp_path / "stacked.gguf"), split_model)
    assert resolved["blk.0.ffn_up.1.weight"].tolist() == [[5 / 4, 6 / 4, 7 / 4, 8 / 4]]
