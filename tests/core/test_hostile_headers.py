"""Any bytes given to the header readers give a model or a problem: never an exception, never
an allocation of a size the file claims (property-based, with hypothesis)."""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.core.errors import BadInputError
from app.core.formats.gguf_header import parse_gguf_header
from app.core.formats.model_info import ModelInfo
from app.core.formats.safetensors_header import read_safetensors_header
from app.core.formats.scan import describe_path
from factories import make_gguf

BOUNDED = settings(max_examples=200, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
U64 = st.one_of(st.integers(0, 16), st.integers(0, 2**64 - 1),
                st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 - 1]))


def _small_gguf() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = make_gguf(Path(tmp) / "m.gguf", n_layers=1, n_embd=32, n_ff=32, n_vocab=16,
                         n_head=2, n_head_kv=1)
        return path.read_bytes()


VALID_GGUF = _small_gguf()


def _peak_allocation(function: Callable[[], Any]) -> tuple[Any, int]:
    """What `function` returns (or the BadInputError it raised) and its peak allocation."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = function()
        except BadInputError as exc:
            outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


def _bounded(peak: int, data: bytes) -> bool:
    # Python objects cost tens of bytes per byte of header; a claimed count costs nothing.
    return peak < 64 * len(data) + (1 << 20)


@st.composite
def gguf_like(draw: st.DrawFn) -> bytes:
    """A GGUF header built from parts with hostile counts, lengths, types and dimensions."""
    out = [draw(st.sampled_from([b"GGUF", b"GGUF", b"GGUF", b"GGUG"]))]
    out.append(struct.pack("<I", draw(st.sampled_from([3, 3, 2, 1, 4, 2**32 - 1]))))
    n_tensors, n_kv = draw(U64), draw(U64)
    out.append(struct.pack("<QQ", n_tensors, n_kv))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.binary(max_size=12))
        out.append(struct.pack("<Q", draw(st.one_of(st.just(len(key)), U64))) + key)
        value_type = draw(st.integers(0, 13))
        out.append(struct.pack("<I", value_type))
        if value_type == 9:  # an array: item type, then a length
            out.append(struct.pack("<IQ", draw(st.integers(0, 13)), draw(U64)))
        out.append(draw(st.binary(max_size=24)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.binary(max_size=8))
        dims = draw(st.lists(U64, max_size=5))
        out.append(struct.pack("<Q", len(name)) + name)
        n_dims = draw(st.one_of(st.just(len(dims)), st.integers(0, 2**32 - 1)))
        out.append(struct.pack("<I", n_dims))
        out.append(b"".join(struct.pack("<Q", d) for d in dims))
        out.append(struct.pack("<IQ", draw(st.integers(0, 40)), draw(U64)))
    out.append(draw(st.binary(max_size=64)))
    return b"".join(out)


@st.composite
def mutated_gguf(draw: st.DrawFn) -> bytes:
    """A real small GGUF, cut short and with bytes overwritten."""
    data = bytearray(VALID_GGUF[:draw(st.integers(0, len(VALID_GGUF)))])
    for _ in range(draw(st.integers(0, 6))):
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data[at:at + 8] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@BOUNDED
@given(st.one_of(gguf_like(), mutated_gguf(), st.binary(max_size=256)))
@example(b"GGUF" + struct.pack("<IQQ", 3, 2**64 - 1, 2**64 - 1))
@example(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63) + b"k")
def test_any_bytes_give_a_gguf_header_or_a_problem(data: bytes) -> None:
    outcome, peak = _peak_allocation(lambda: parse_gguf_header(memoryview(data),
                                                               Path("x.gguf"), len(data)))
    assert _bounded(peak, data), f"{peak} bytes allocated for {len(data)} bytes of input"
    if isinstance(outcome, BadInputError):
        assert "x.gguf" in str(outcome)


def _scan_file(data: bytes, name: str) -> ModelInfo | None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name.endswith(".safetensors"):
            (folder / "config.json").write_text('{"model_type": "llama"}')
        path = folder / name
        path.write_bytes(data)
        return describe_path(path if name.endswith(".gguf") else folder)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(gguf_like(), mutated_gguf()))
def test_a_scan_of_any_gguf_bytes_lists_a_model_or_its_problem(data: bytes) -> None:
    model = _scan_file(data, "hostile.gguf")
    assert isinstance(model, ModelInfo)
    if not (VALID_GGUF.startswith(data) and len(data) == len(VALID_GGUF)):
        assert model.problems or model.tensors is not None


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False), st.text(max_size=8))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F64", "Q4", "", 3]),
    "shape": st.one_of(st.lists(U64, max_size=4), JSON),
    "data_offsets": st.one_of(st.lists(U64, min_size=2, max_size=2), JSON)})


@st.composite
def safetensors_like(draw: st.DrawFn) -> bytes:
    header: Any = draw(st.one_of(
        st.dictionaries(st.text(max_size=10), st.one_of(ENTRY, JSON), max_size=4), JSON))
    if isinstance(header, dict) and draw(st.booleans()):
        header["__metadata__"] = draw(JSON)
    raw = json.dumps(header).encode()
    raw = raw[:draw(st.integers(0, len(raw)))] if draw(st.booleans()) else raw
    length = draw(st.one_of(st.just(len(raw)), U64))
    return struct.pack("<Q", length) + raw + draw(st.binary(max_size=64))


@BOUNDED
@given(st.one_of(safetensors_like(), st.binary(max_size=128)))
@example(struct.pack("<Q", 200002) + b"[" * 100001 + b"]" * 100001)
@example(struct.pack("<Q", 30) + b'{"a": {"shape": [' + b"9" * 5000 + b"]}}")
@example(struct.pack("<Q", 2**64 - 1) + b"{}")
def test_any_bytes_give_a_safetensors_header_or_a_problem(data: bytes) -> None:
    data = _fix_length(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(data)
        outcome, peak = _peak_allocation(lambda: read_safetensors_header(path))
    assert _bounded(peak, data), f"{peak} bytes allocated for {len(data)} bytes of input"
    if isinstance(outcome, BadInputError):
        assert "model.safetensors" in str(outcome)


def _fix_length(data: bytes) -> bytes:
    """The explicit examples give a header length to be replaced by the real one (30)."""
    if data[:8] == struct.pack("<Q", 30):
        return struct.pack("<Q", len(data) - 8) + data[8:]
    return data


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(safetensors_like())
def test_a_scan_of_any_safetensors_bytes_lists_a_model_or_its_problem(data: bytes) -> None:
    model = _scan_file(data, "model.safetensors")
    assert isinstance(model, ModelInfo)


@pytest.mark.parametrize("payload", [b"[" * 100001 + b"]" * 100001,
                                     b'{"a": {"shape": [' + b"9" * 5000 + b"]}}"])
def test_json_bombs_in_a_safetensors_header_are_format_errors(tmp_path: Path,
                                                              payload: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(payload)) + payload)
    with pytest.raises(BadInputError, match="header is not valid JSON"):
        read_safetensors_header(path)
