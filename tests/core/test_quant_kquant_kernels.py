"""The compiled CPU searches on rows far from ordinary weights: denormal, huge and mixed
magnitudes, where every shortcut around the C's float32 operations (rounding by rint, a
min/max taken another way, a wider intermediate) shows up as different bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ggml_reference import ggml_quantize

from app.core.quant import kquant_kernels, quantize


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
