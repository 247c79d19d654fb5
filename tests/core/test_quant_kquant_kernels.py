"""The compiled CPU searches on rows far from ordinary weights: denormal, huge and mixed
magnitudes, where every shortcut around the C's float32 operations (rounding by rint, a
min/max taken another way, a wider intermediate) shows up as different bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ggml_reference import ggml_quantize

from app.core.quant import kquant_kernels, kquant_search_cpu, quantize
from app.core.quant.kquant_search import make_q3_quants


def _rows(case: str) -> np.ndarray:
    rng = np.random.default_rng(["denormal", "huge", "mixed", "tail"].index(case))
    # Row counts that leave a partial tile of lanes at the end.
    base = rng.standard_normal((kquant_kernels.LANES // 8 + 3, 512)).astype(np.float32)
    if case == "denormal":
        return base * np.float32(1e-39)
    if case == "huge":
        return base * np.float32(1e30)
    if case == "mixed":
        return base * np.logspace(-30, 30, 512).astype(np.float32)
    base[1, :100] = 0.0
    base[2, 256:] = 7.0
    return base


@pytest.mark.parametrize("case", ["denormal", "huge", "mixed", "tail"])
@pytest.mark.parametrize("type_name", ["Q2_K", "Q4_K", "Q5_K", "Q6_K"])
def test_compiled_searches_give_ggml_bytes_on_extreme_rows(type_name: str, case: str) -> None:
    rows = _rows(case)
    ours = quantize(torch.from_numpy(rows), type_name).numpy()
    expected = ggml_quantize(rows, type_name, None)
    differing = (ours != expected).any(axis=1).sum()
    assert differing == 0, f"{differing} of {len(rows)} rows differ"


@pytest.mark.parametrize("case", ["denormal", "tail"])
def test_compiled_q3_k_search_gives_ggml_bytes(case: str) -> None:
    rows = _rows(case)
    ours = quantize(torch.from_numpy(rows), "Q3_K").numpy()
    differing = (ours != ggml_quantize(rows, "Q3_K", None)).any(axis=1).sum()
    assert differing == 0, f"{differing} of {len(rows)} rows differ"


def test_compiled_and_torch_q3_k_searches_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(21)
    x = torch.from_numpy((rng.standard_normal((500, 16)) * 0.05).astype(np.float32))
    x[3] = 0.0
    x[4, :8] = 0.25
    fast = make_q3_quants(x, 4)
    monkeypatch.setattr(kquant_search_cpu, "ENABLED", False)
    reference = make_q3_quants(x, 4)
    for a, b in zip(fast, reference, strict=True):
        assert torch.equal(a, b)


def test_kernels_compile_where_numba_has_no_writable_cache_folder() -> None:
    # An installed copy on a read-only file system with no writable home: numba finds no
    # folder for its cache (emulated by taking away every place it looks) and raises at
    # decoration unless the module falls back to compiling without a cache.
    script = (
        "import numpy as np\n"
        "from numba.core import caching\n"
        "caching.CacheImpl._locator_classes = []\n"
        "from app.core.quant import kquant_kernels as k\n"
        "x = np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)\n"
        "codes = np.empty_like(x)\n"
        "k.requantize(x, np.zeros_like(x), np.array([1.0], np.float32),\n"
        "             np.array([0.0], np.float32), -4, 3, 4, codes)\n"
        "print(codes.tolist())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    # nearest_int rounds half to even (0.5 -> 0), clamped to [-4, 3], then + 4.
    assert done.stdout.strip() == "[[4.0, 3.0, 6.0, 7.0]]"


@pytest.mark.parametrize("type_name", ["Q3_K", "Q4_K", "Q6_K"])
def test_compiled_searches_give_the_same_bytes_from_two_threads_at_once(type_name: str) -> None:
    # The converter's two worker threads call the kernels together, without the GIL: each
    # call must work in buffers of its own (a shared tile would mix the threads' rows).
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    inputs = [torch.from_numpy(rng.standard_normal((96, 1024)).astype(np.float32) * scale)
              for scale in (0.02, 3.0, 0.02, 3.0)]
    alone = [quantize(x, type_name) for x in inputs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda x: quantize(x, type_name), inputs))
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
