"""16-bit sources written as another float type skip the float32 step: the same bytes."""

from __future__ import annotations

import pytest
import torch

from app.core.convert.execute import encode
from app.core.quant import quantize


def _hard_values(dtype: torch.dtype) -> torch.Tensor:
    values = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 0.02
    values[0, :6] = torch.tensor([7e4, -1e5, 65504.0, 65520.0, 3e38, -3e38])  # f16 overflow
    values[1, :4] = torch.tensor([1e-8, -6e-8, 3e-5, 1e-40])  # f16 subnormals and underflow
    values[2, :3] = torch.tensor([float("inf"), float("-inf"), 0.0])
    values[3] = -0.0
    return values.to(dtype)


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("out_type", ["F16", "BF16", "F32"])
@pytest.mark.parametrize("to", ["gguf", "hf"])
def test_direct_conversion_writes_the_float32_path_s_bytes(source: torch.dtype, out_type: str,
                                                          to: str) -> None:
    values = _hard_values(source)
    direct = encode(values, out_type, to)
    through_float32 = encode(values.to(torch.float32), out_type, to)
    assert direct.dtype == torch.uint8
    assert torch.equal(direct.reshape(-1), through_float32.reshape(-1))
    if to == "gguf":
        assert torch.equal(direct.reshape(-1), quantize(values.float(), out_type).reshape(-1))
