"""ggml's own quantizers, called through the library llama-cpp-python ships, to make reference
bytes at test time: `ggml_quantize_chunk` is the function llama-quantize calls for every chunk
of rows, and unlike the `llama_model_quantize` binding it takes the importance weights."""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType


@cache
def _library() -> ctypes.CDLL:
    llama_cpp = pytest.importorskip("llama_cpp")
    folder = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(folder.glob("libggml-base.*")) + sorted(folder.glob("libggml.*"))
    for candidate in candidates:
        library = ctypes.CDLL(str(candidate))
        if hasattr(library, "ggml_quantize_chunk"):
            function = library.ggml_quantize_chunk
            function.restype = ctypes.c_size_t
            function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            return library
    pytest.skip(f"no ggml library with ggml_quantize_chunk in {folder}")


def ggml_quantize(rows: np.ndarray, type_name: str, importance: np.ndarray | None) -> np.ndarray:
    """uint8 [n_rows, row_bytes] as ggml writes float32 `rows` [n_rows, n] (one importance
    vector [n] for all rows, as llama-quantize passes it per matrix)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n = rows.shape
    ggml_type = GGMLQuantizationType[type_name]
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[ggml_type]
    out = np.zeros((n_rows, n // block * size), dtype=np.uint8)
    weights = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    written = _library().ggml_quantize_chunk(
        int(ggml_type), rows.ctypes.data, out.ctypes.data, 0, n_rows, n,
        None if weights is None else weights.ctypes.data)
    assert written == out.size
    return out
