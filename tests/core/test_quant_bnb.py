"""bitsandbytes dequantization in plain torch against bitsandbytes itself, bit for bit, on
checkpoints transformers + bitsandbytes write on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import factories
from app.core.errors import FormatError
from app.core.quant import bnb

VARIANTS = {
    "nf4-double": dict(quant_type="nf4", double_quant=True),
    "nf4": dict(quant_type="nf4", double_quant=False),
    "fp4-double": dict(quant_type="fp4", double_quant=True),
    "fp4": dict(quant_type="fp4", double_quant=False),
    # packed bytes held in bfloat16 elements, unquantized layers and dequantized dtype bf16
    "nf4-bf16-storage": dict(quant_type="nf4", double_quant=True, storage="bfloat16",
                             dtype="bfloat16"),
}


@pytest.fixture(scope="module")
def bnb_checkpoints(tiny_models: dict[str, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bnb-variants")
    made = {name: factories.make_bnb_model(tiny_models["llama"], root / name, **options)
            for name, options in VARIANTS.items()}
    made["int8"] = tiny_models["llama-bnb8"]
    return made


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _bits(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.int32 if values.element_size() == 4 else torch.int16)


def _reference_4bit(weight: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    import bitsandbytes.functional as F

    parts = {k[len(weight) + 1:]: v for k, v in tensors.items() if k.startswith(f"{weight}.")}
    state = F.QuantState.from_dict(parts, torch.device("cpu"))
    return F.dequantize_4bit(tensors[weight], state)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_4bit_weights_equal_bitsandbytes_bit_for_bit(variant: str,
                                                     bnb_checkpoints: dict[str, Path]) -> None:
    tensors = _state_dict(bnb_checkpoints[variant])
    weights = [k.removesuffix(f".{bnb.STATE_PREFIX}{VARIANTS[variant]['quant_type']}")
               for k in tensors if bnb.STATE_PREFIX in k]
    assert len(weights) == 14  # 7 linear layers in each of the 2 blocks
    for weight in weights:
        ours = bnb.dequantize_weight(weight, tensors)
        reference = _reference_4bit(weight, tensors)
        assert ours.dtype == reference.dtype and ours.shape == reference.shape, weight
        assert torch.equal(_bits(ours), _bits(reference)), weight


def test_packed_storage_dtype_is_read_as_bytes(bnb_checkpoints: dict[str, Path]) -> None:
    tensors = _state_dict(bnb_checkpoints["nf4-bf16-storage"])
    packed = tensors["model.layers.0.self_attn.q_proj.weight"]
    assert packed.dtype == torch.bfloat16 and packed.shape == (1024, 1)  # 64×64 values
    ours = bnb.dequantize_weight("model.layers.0.self_attn.q_proj.weight", tensors)
    assert ours.shape == (64, 64) and ours.dtype == torch.bfloat16


def test_a_part_of_a_weight_dequantizes_like_the_whole(bnb_checkpoints: dict[str, Path]) -> None:
    weight = "model.layers.1.mlp.down_proj.weight"  # [64, 128]: 128 blocks of 64
    tensors = _state_dict(bnb_checkpoints["nf4-double"])
    state = bnb.parse_quant_state(
        tensors[f"{weight}.{bnb.STATE_PREFIX}nf4"].numpy().tobytes(), tensor=weight)
    whole = bnb.dequantize_weight(weight, tensors).reshape(-1)
    # rows 3..7 (whole blocks), then a part that starts and ends inside blocks
    for first, count in ((3 * 128, 5 * 128), (3 * 128 + 32, 100)):
        blocks = slice(first // 64, (first + count - 1) // 64 + 1)
        scales = bnb.dequantize_absmax(tensors[f"{weight}.absmax"][blocks], state,
                                       tensors[f"{weight}.nested_absmax"],
                                       tensors[f"{weight}.nested_quant_map"],
                                       first_block=first // 64)
        part = bnb.dequantize_4bit(tensors[weight].reshape(-1)[first // 2:(first + count) // 2],
                                   scales, state, first_element=first, n_elements=count)
        assert torch.equal(part, whole[first:first + count])


def test_int8_weights_equal_bitsandbytes_bit_for_bit(bnb_checkpoints: dict[str, Path]) -> None:
    import bitsandbytes.functional as F

    tensors = _state_dict(bnb_checkpoints["int8"])
    modules = [k.removesuffix(".SCB") for k in tensors if k.endswith(".SCB")]
    assert len(modules) == 14
    for module in modules:
        ours = bnb.dequantize_weight(f"{module}.weight", tensors)
        reference = F.int8_vectorwise_dequant(tensors[f"{module}.weight"], tensors[f"{module}.SCB"])
        assert ours.dtype == torch.float32 and torch.equal(_bits(ours), _bits(reference)), module


def test_fp4_and_nf4_code_tables_are_bitsandbytes_own() -> None:
    import bitsandbytes.functional as F

    for kind in bnb.BNB4_KINDS:
        ours, theirs = bnb.code_table(kind, "cpu"), F.get_4bit_type(kind, "cpu")
        assert torch.equal(ours, theirs)  # equal as values (FP4's -0 decodes to +0 in both)


def test_missing_companions_name_the_tensor(bnb_checkpoints: dict[str, Path]) -> None:
    weight = "model.layers.0.mlp.up_proj.weight"
    tensors = _state_dict(bnb_checkpoints["nf4-double"])
    for companion, reason in ((f"{bnb.STATE_PREFIX}nf4", "without its quant_state"),
                              ("absmax", "without its absmax"),
                              ("nested_absmax", "without its nested_absmax")):
        broken = {k: v for k, v in tensors.items() if k != f"{weight}.{companion}"}
        with pytest.raises(FormatError, match=reason) as caught:
            bnb.dequantize_weight(weight, broken)
        assert caught.value.tensor == weight
    int8 = _state_dict(bnb_checkpoints["int8"])
    del int8["model.layers.0.mlp.up_proj.SCB"]
    with pytest.raises(FormatError, match="without its SCB") as caught:
        bnb.dequantize_weight(weight, int8)
    assert caught.value.tensor == weight


def _state_bytes(**fields: object) -> bytes:
    base: dict[str, object] = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32",
                               "shape": [64, 64]}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize(("raw", "reason"), [
    (_state_bytes(quant_type="int4"), "unknown bitsandbytes quant_type 'int4'"),
    (_state_bytes(blocksize=48), "blocksize 48"),
    (_state_bytes(dtype="int8"), "dtype 'int8'"),
    (_state_bytes(shape=[64, -1]), "shape"),
    (_state_bytes(nested_blocksize=256), "half of the nested"),
    (b"\xff{not json", "unreadable bitsandbytes quant state"),
])
def test_bad_quant_states_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(FormatError, match=reason) as caught:
        bnb.parse_quant_state(raw, tensor="w")
    assert caught.value.tensor == "w"


def test_an_unknown_quant_type_key_is_refused() -> None:
    tensors = {"w": torch.zeros(8, 1, dtype=torch.uint8),
               f"w.{bnb.STATE_PREFIX}af4": torch.zeros(4, dtype=torch.uint8)}
    with pytest.raises(FormatError, match="unknown bitsandbytes quant_type 'af4'"):
        bnb.dequantize_weight("w", tensors)
