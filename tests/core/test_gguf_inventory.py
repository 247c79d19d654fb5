"""GGUF headers: the real SmolLM2 file, MoE layouts, split shards, and hostile headers."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from app.core.errors import FormatError, UnsupportedError
from app.core.formats.gguf_header import read_gguf_header
from app.core.formats.scan import inspect_path
from factories import make_gguf, make_split_gguf


def test_smollm2_is_described_exactly(smollm2_gguf: Path) -> None:
    model = inspect_path(smollm2_gguf)
    assert model.format == "gguf"
    assert model.architecture == "llama"
    assert model.n_tensors == 272
    assert model.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert model.n_layers == 30
    assert model.context_length == 8192
    assert model.quantization == "Q4_1"
    assert model.has_tokenizer
    assert model.moe is None
    assert model.problems == ()
    assert model.file_size == smollm2_gguf.stat().st_size
    embedding = next(t for t in model.tensors if t.name == "token_embd.weight")
    assert (embedding.type, embedding.shape) == ("Q8_0", (576, 49152))
    assert embedding.n_bytes == 576 * 49152 // 32 * 34
    # 576 * 49152 embedding + 30 blocks + output norm, all counted from shapes
    assert model.parameters == sum(t.n_params for t in model.tensors) > 134_000_000


def test_header_reads_only_what_it_needs(smollm2_gguf: Path) -> None:
    header = read_gguf_header(smollm2_gguf, load_arrays=frozenset({"tokenizer.ggml.tokens"}))
    tokens = header.get("tokenizer.ggml.tokens")
    assert len(tokens) == 49152 and tokens[0] == "<|endoftext|>"
    assert header.get("tokenizer.ggml.merges").length == 48900  # skipped, length kept
    assert header.get("llama.attention.head_count_kv") == 3
    assert header.truncated_tensors() == []


@pytest.mark.parametrize("layout", ["stacked", "split"])
def test_moe_layout_is_detected(tmp_path: Path, layout: str) -> None:
    path = make_gguf(tmp_path / f"moe-{layout}.gguf", n_experts=4, expert_layout=layout)
    model = inspect_path(path)
    assert model.moe is not None
    assert (model.moe.n_experts, model.moe.n_experts_used, model.moe.layout) == (4, 2, layout)
    relayout_hint = any("relayout" in p.text for p in model.problems)
    assert relayout_hint == (layout == "split")
    if layout == "stacked":
        exps = next(t for t in model.tensors if t.name == "blk.0.ffn_gate_exps.weight")
        assert exps.shape == (64, 128, 4)  # ne order: n_embd, n_ff, n_expert


def test_split_shards_are_one_model(tmp_path: Path) -> None:
    shards = make_split_gguf(tmp_path, "big-model", n_shards=3)
    model = inspect_path(shards[1])
    assert model.name == "big-model"
    assert model.files == tuple(shards)
    assert model.n_tensors == 6
    assert model.file_size == sum(p.stat().st_size for p in shards)
    assert not model.fatal_problems


def test_missing_shard_is_a_problem(tmp_path: Path) -> None:
    shards = make_split_gguf(tmp_path, "big-model", n_shards=3)
    shards[1].unlink()
    model = inspect_path(shards[0])
    assert any("missing shard(s) 00002 of 00003" in p.text for p in model.fatal_problems)


def test_truncated_data_names_the_tensor(tmp_path: Path, smollm2_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as src:
        cut.write_bytes(src.read(50_000_000))
    model = inspect_path(cut)
    problem = model.fatal_problems[0].text
    assert "truncated" in problem and "blk." in problem


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


HOSTILE = {
    "wrong magic": b"GGML" + b"\0" * 60,
    "empty": b"",
    "cut in header": _header(1, 1)[:10],
    "absurd tensor count": _header(2**62, 0) + b"\0" * 64,
    "absurd kv count": _header(0, 2**60) + b"\0" * 64,
    "absurd string length": _header(0, 1) + struct.pack("<Q", 2**62) + b"abc",
    "absurd array length": _header(0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 0, 2**61),
    "absurd string array": _header(0, 1) + _string(b"k") + struct.pack("<IIQ", 9, 8, 2**40)
    + _string(b"x"),
    "unknown value type": _header(0, 1) + _string(b"k") + struct.pack("<I", 77) + b"\0" * 16,
    "too many dims": _header(1, 0) + _string(b"t") + struct.pack("<I", 9) + b"\0" * 80,
    "version 99": _header(0, 0, version=99),
    "row not a block multiple": _header(1, 0) + _string(b"t") + struct.pack("<IQQIQ", 2, 33, 1,
                                                                              2, 0) + b"\0" * 64,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_fail_cleanly_without_allocating(tmp_path: Path, case: str) -> None:
    path = tmp_path / "hostile.gguf"
    path.write_bytes(HOSTILE[case])
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as excinfo:
            read_gguf_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"{case}: allocated {peak} bytes"
    message = str(excinfo.value)
    assert str(path) in message and "\n" not in message
    model = inspect_path(path)  # a scan turns the same failure into a problem on the model
    assert model.fatal_problems


def test_unknown_tensor_type_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "future.gguf"
    path.write_bytes(_header(1, 0) + _string(b"t") + struct.pack("<IQIQ", 1, 32, 9999, 0)
                     + b"\0" * 64)
    with pytest.raises(UnsupportedError, match="unknown tensor type 9999"):
        read_gguf_header(path)
