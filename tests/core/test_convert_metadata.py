"""The fast metadata packer writes exactly the bytes gguf-py's writer packs item by item."""

from __future__ import annotations

from typing import Any

import pytest
from gguf import GGUFValueType, GGUFWriter

from app.core.convert.metadata import FastGGUFWriter

V = GGUFValueType
CASES: list[tuple[Any, GGUFValueType | None]] = [
    (["<s>", "▁hello", "中文", "", "\n", "é" * 300], None),
    ([b"\xff\xfe", b"raw", bytearray(b"ba")], V.STRING),
    (["a", b"b"], None),  # mixed str and bytes: gguf-py's own checks decide
    ([0.5, -1e-30, 3.4e38, float("inf")], None),
    ([1, -2, 2**31 - 1], None),
    ([True, False, True], None),
    ((1, 2, 3), V.UINT8),
    ([1, 2, 3], V.INT64),
    ([1.0, 2.5], V.FLOAT64),
    ([1, 2, 3], V.UINT32),
    ([0, 1], V.BOOL),
    (["only"], None),
    ([[1, 2], [3]], None),  # nested: left to gguf-py
]


@pytest.mark.parametrize(("value", "sub_type"), CASES)
@pytest.mark.parametrize("add_vtype", [True, False])
def test_arrays_pack_to_gguf_py_bytes(value: Any, sub_type: GGUFValueType | None,
                                      add_vtype: bool) -> None:
    reference = GGUFWriter(None, "llama")._pack_val(value, V.ARRAY, add_vtype, sub_type)
    assert FastGGUFWriter(None, "llama")._pack_val(value, V.ARRAY, add_vtype,
                                                   sub_type) == reference


@pytest.mark.parametrize("value", [[1, 2.0], [1, "a"], []])
def test_what_gguf_py_refuses_is_still_refused(value: list[Any]) -> None:
    with pytest.raises(ValueError):
        GGUFWriter(None, "llama")._pack_val(value, V.ARRAY, True)
    with pytest.raises(ValueError):
        FastGGUFWriter(None, "llama")._pack_val(value, V.ARRAY, True)
