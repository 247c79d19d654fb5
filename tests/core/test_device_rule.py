"""The device rule: every dequantize/quantize function returns its result on the device of its
input. Run on the CPU, on the `meta` device (shapes only, no data: catches any hidden `.cpu()`,
`.item()` or numpy round trip) and on CUDA where torch sees one."""

from __future__ import annotations

import pytest
import torch

from app.core.convert.reading import decode_rows
from app.core.quant import bnb, codec
from app.core.quant.bnb_state import Bnb4State
from app.core.quant.types import TYPES

DEVICES = [
    "cpu",
    "meta",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="torch sees no CUDA GPU")),
]
READABLE = sorted(name for name in TYPES if codec.can_dequantize(name))
WRITABLE = sorted(codec.QUANTIZERS)
ROW = 256  # a multiple of every block size


def _bytes_of(qtype: str, rows: int, device: str) -> torch.Tensor:
    spec = TYPES[qtype]
    row_bytes = ROW // spec.block_size * spec.type_size
    if device == "meta":
        return torch.empty((rows, row_bytes), dtype=torch.uint8, device="meta")
    # Zeros are valid blocks of every type (zero scales); real values come from quantizing.
    return torch.zeros((rows, row_bytes), dtype=torch.uint8, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", READABLE)
def test_dequantize_stays_on_the_input_device(qtype: str, device: str) -> None:
    out = codec.dequantize(_bytes_of(qtype, 3, device), qtype)
    assert out.device.type == device
    assert out.shape == (3, ROW) and out.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", WRITABLE)
def test_quantize_stays_on_the_input_device(qtype: str, device: str) -> None:
    weights = torch.randn(3, ROW, generator=torch.Generator().manual_seed(0)).to(device)
    out = codec.quantize(weights, qtype)
    assert out.device.type == device and out.dtype == torch.uint8
    assert out.shape == _bytes_of(qtype, 3, "meta").shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "Q8_0", "Q4_K"])
def test_the_converters_row_decoder_stays_on_the_input_device(dtype: str, device: str) -> None:
    if dtype in ("F32", "F16", "BF16"):
        width = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
        raw = torch.zeros(2 * ROW * width, dtype=torch.uint8, device=device)
    else:
        raw = _bytes_of(dtype, 2, device).reshape(-1)
    out = decode_rows(raw, dtype, 2, ROW)
    assert out.device.type == device and out.shape == (2, ROW)


def _values(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    if dtype == torch.uint8 or dtype == torch.int8:
        values = torch.randint(-128 if dtype == torch.int8 else 0, 128, shape, dtype=dtype)
    else:
        values = torch.rand(shape, dtype=dtype) + 0.5
    return values.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_bnb_4bit_stays_on_the_input_device(kind: str, nested: bool, device: str) -> None:
    state = Bnb4State(kind, 64, "bfloat16", (8, 128), 256 if nested else None,  # type: ignore[arg-type]
                      0.05 if nested else None)
    packed = _values((8 * 128 // 2, 1), torch.uint8, device)
    if nested:
        scales = bnb.dequantize_absmax(_values((16,), torch.uint8, device), state,
                                       _values((1,), torch.float32, device),
                                       _values((256,), torch.float32, device))
    else:
        scales = bnb.dequantize_absmax(_values((16,), torch.float32, device), state)
    assert scales.device.type == device
    whole = bnb.dequantize_4bit(packed, scales, state)
    assert whole.device.type == device and whole.shape == (8, 128)
    assert whole.dtype == torch.bfloat16
    part = bnb.dequantize_4bit(packed.reshape(-1)[32:96], scales[1:], state, first_element=64,
                               n_elements=128)
    assert part.device.type == device and part.shape == (128,)


@pytest.mark.parametrize("device", DEVICES)
def test_bnb_int8_stays_on_the_input_device(device: str) -> None:
    out = bnb.dequantize_int8(_values((4, 64), torch.int8, device),
                              _values((4,), torch.float32, device))
    assert out.device.type == device and out.dtype == torch.float32 and out.shape == (4, 64)
