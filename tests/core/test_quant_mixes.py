"""Target table and per-tensor type plans: llama-quantize's own choices on the reference files,
on the real SmolLM2, and hand-derived cases for GQA, MoE and 70B-like models."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import LlamaFileType

from app.core.errors import FormatError, OptionError, UnsupportedError
from app.core.formats.gguf_header import read_gguf_header
from app.core.quant.mixes import plan_tensor_types
from app.core.quant.specs import (
    ModelHparams,
    TensorSpec,
    gguf_hparams,
    gguf_tensor_specs,
    llama_tensor_specs,
)
from app.core.quant.targets import TARGETS, get_target
from app.core.quant.types import fitting_type
from factories import make_gguf
from reference_models import ReferenceFiles

MIXES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gqa", "tiny-moe"])
@pytest.mark.parametrize("mix", MIXES)
def test_mix_types_equal_llama_quantize(mix: str, model: str,
                                        reference_files: ReferenceFiles) -> None:
    source = read_gguf_header(reference_files.source(model))
    written = read_gguf_header(reference_files.mix(model, mix))
    plan = plan_tensor_types(mix, gguf_tensor_specs(source), gguf_hparams(source))
    assert [t.name for t in plan.tensors] == [t.name for t in source.tensors]
    expected = {t.name: t.type_name for t in written.tensors}
    assert {t.name: t.type.name for t in plan.tensors} == expected
    # The plan predicts the data section of the file to the byte.
    assert plan.data_bytes() == written.file_size - written.data_offset
    assert plan.approximate is None
    # tiny-llama's ffn_down rows (352) fit no 256-element type.
    fell_back = [note.split(":")[0] for note in plan.fallbacks]
    assert fell_back == ([f"blk.{i}.ffn_down.weight" for i in range(4)]
                         if model == "tiny-llama" else [])


@pytest.mark.parametrize("pure", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S",
                                  "Q4_K_S", "Q5_K_S", "Q6_K"])
def test_pure_plans_equal_llama_quantize_pure(pure: str, kquants_reference: Path) -> None:
    source = read_gguf_header(kquants_reference / "tiny-llama-F32.gguf")
    default = TARGETS[pure].default_type.name
    written = read_gguf_header(kquants_reference / f"tiny-llama-pure-{default}.gguf")
    plan = plan_tensor_types(pure, gguf_tensor_specs(source), gguf_hparams(source), pure=True)
    assert {t.name: t.type.name for t in plan.tensors} == \
        {t.name: t.type_name for t in written.tensors}
    assert plan.data_bytes() == written.file_size - written.data_offset


def test_smollm2_q4_1_types_are_reproduced(smollm2_gguf: Path) -> None:
    header = read_gguf_header(smollm2_gguf)
    plan = plan_tensor_types("Q4_1", gguf_tensor_specs(header), gguf_hparams(header))
    assert {t.name: t.type.name for t in plan.tensors} == \
        {t.name: t.type_name for t in header.tensors}
    # Tied embeddings take the output rule (Q6_K), which falls back on 576-element rows.
    assert plan.fallbacks == ["token_embd.weight: row length 576 is not a multiple of 256 "
                              "(required for Q6_K); falling back to Q8_0"]
    assert plan.tensor_bytes == sum(t.n_bytes for t in header.tensors)


def _smollm2_specs(tied: bool = True) -> list[TensorSpec]:
    return llama_tensor_specs(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3,
                              n_vocab=49152, tied_embeddings=tied)


def test_k_mix_falls_back_on_smollm2_rows(smollm2_gguf: Path) -> None:
    header = read_gguf_header(smollm2_gguf)
    specs = gguf_tensor_specs(header)
    assert sorted((s.name, s.shape) for s in specs) == \
        sorted((s.name, s.shape) for s in _smollm2_specs())
    plan = plan_tensor_types("Q4_K_M", specs, gguf_hparams(header))
    more_bits = {0, 1, 2, 26, 27, 28, 29, 5, 8, 11, 14, 17, 20, 23}  # use_more_bits(i, 30)
    for layer in range(30):
        def type_of(role: str, layer: int = layer) -> str:
            return plan.type_of(f"blk.{layer}.{role}.weight").name
        for role in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"):
            assert type_of(role) == "Q5_0"  # Q4_K does not fit 576; llama.cpp uses Q5_0
        assert type_of("attn_v") == ("Q8_0" if layer in more_bits else "Q5_0")  # Q6_K → Q8_0
        assert type_of("ffn_down") == ("Q6_K" if layer in more_bits else "Q4_K")  # 1536 fits
        assert type_of("attn_norm") == "F32"
    assert plan.type_of("token_embd.weight").name == "Q8_0"  # output rule on a 576 row
    assert len(plan.fallbacks) == 5 * 30 + 30
    assert "blk.0.attn_q.weight: row length 576 is not a multiple of 256 (required for Q4_K);" \
           " falling back to Q5_0" in plan.fallbacks


def test_walk_order_is_llama_cpp_s_not_the_files() -> None:
    specs = llama_tensor_specs(n_layer=12, n_embd=256, n_ff=512, n_head=4, n_head_kv=4,
                               n_vocab=64)
    hparams = ModelHparams(12, 4, 4)
    shuffled = specs[:]
    random.Random(0).shuffle(shuffled)
    for mix in ("Q3_K_M", "Q4_K_M", "Q4_K_S"):
        ordered = {t.name: t.type for t in plan_tensor_types(mix, specs, hparams).tensors}
        assert {t.name: t.type for t in plan_tensor_types(mix, shuffled, hparams).tensors} \
            == ordered
    q3 = plan_tensor_types("Q3_K_M", shuffled, hparams)
    # attn_v: the first two (blk.0, blk.1; not blk.10, blk.11) get Q5_K.
    assert [q3.type_of(f"blk.{i}.attn_v.weight").name for i in range(12)] == \
        ["Q5_K", "Q5_K"] + ["Q4_K"] * 10


def test_gqa_and_70b_rules() -> None:
    def attn_v(mix: str, n_layer: int, n_head: int, n_head_kv: int, layer: int = 5) -> str:
        specs = llama_tensor_specs(n_layer=n_layer, n_embd=256, n_ff=512, n_head=n_head,
                                   n_head_kv=n_head_kv, n_vocab=64)
        plan = plan_tensor_types(mix, specs, ModelHparams(n_layer, n_head, n_head_kv))
        return plan.type_of(f"blk.{layer}.attn_v.weight").name

    assert attn_v("Q2_K", 32, 32, 8) == "Q4_K"  # n_gqa 4
    assert attn_v("Q2_K", 32, 32, 16) == "Q3_K"  # n_gqa 2
    assert attn_v("Q3_K_S", 80, 64, 8) == "Q5_K"  # 70B: Q3_K → Q5_K
    assert attn_v("Q3_K_S", 80, 64, 64) == "Q3_K"  # 80 layers without GQA is 65B
    assert attn_v("Q4_K_S", 80, 64, 8, layer=2) == "Q5_K"  # i < 4
    assert attn_v("Q4_K_S", 80, 64, 8, layer=40) == "Q5_K"  # 70B: Q4_K → Q5_K
    assert attn_v("Q4_K_S", 32, 32, 8, layer=40 % 32) == "Q4_K"
    assert attn_v("Q5_K_S", 80, 64, 8) == "Q5_K"


@pytest.mark.parametrize("arch,n_layer", [("qwen2", 80), ("deci", 80), ("olmo", 80),
                                           ("jais2", 68), ("llama", 80)])
def test_70b_rule_for_every_architecture_llama_cpp_applies_it_to(arch: str,
                                                                 n_layer: int) -> None:
    """llama.cpp's loaders for these architectures call the model 70B, and attn_v then gets
    Q5_K where the mix gives Q3_K or Q4_K."""
    specs = llama_tensor_specs(n_layer=n_layer, n_embd=8192, n_ff=29568, n_head=64,
                               n_head_kv=8, n_vocab=152064, attention_bias=True)
    plan = plan_tensor_types("Q4_K_M", specs, ModelHparams(n_layer, 64, 8, arch=arch))
    # Layer 11 is not one of use_more_bits' layers (which get Q6_K), so Q4_K → Q5_K.
    assert plan.type_of("blk.11.attn_v.weight").name == "Q5_K"
    assert plan.type_of("blk.0.attn_v.weight").name == "Q6_K"
    assert plan.type_of("blk.11.attn_q.weight").name == "Q4_K"
    other = plan_tensor_types("Q4_K_M", specs, ModelHparams(n_layer, 64, 8, arch="gemma2"))
    assert other.type_of("blk.11.attn_v.weight").name == "Q4_K"
    fewer = llama_tensor_specs(n_layer=n_layer - 4, n_embd=8192, n_ff=29568, n_head=64,
                               n_head_kv=8, n_vocab=152064)
    plan = plan_tensor_types("Q4_K_M", fewer, ModelHparams(n_layer - 4, 64, 8, arch=arch))
    assert plan.type_of("blk.12.attn_v.weight").name == "Q4_K"  # not a more-bits layer


@pytest.mark.parametrize("layout", ["stacked", "split"])
def test_eight_expert_rules(layout: str) -> None:
    n_layer = 32
    specs = llama_tensor_specs(n_layer=n_layer, n_embd=256, n_ff=512, n_head=32, n_head_kv=8,
                               n_vocab=64, n_expert=8, expert_layout=layout)
    hparams = ModelHparams(n_layer, 32, 8, n_expert=8)
    plan = plan_tensor_types("Q4_K_M", specs, hparams)
    more_bits = set(range(4)) | set(range(28, 32)) | set(range(6, 28, 3))
    suffixes = ["_exps"] if layout == "stacked" else [f".{e}" for e in range(8)]
    for layer in range(n_layer):
        assert plan.type_of(f"blk.{layer}.attn_v.weight").name == "Q8_0"
        assert plan.type_of(f"blk.{layer}.attn_k.weight").name == "Q8_0"
        assert plan.type_of(f"blk.{layer}.attn_q.weight").name == "Q4_K"
        assert plan.type_of(f"blk.{layer}.attn_output.weight").name == "Q5_K"
        assert plan.type_of(f"blk.{layer}.ffn_gate_inp.weight").name == "F32"
        for suffix in suffixes:
            down = plan.type_of(f"blk.{layer}.ffn_down{suffix}.weight").name
            assert down == ("Q6_K" if layer in more_bits else "Q4_K")
            assert plan.type_of(f"blk.{layer}.ffn_up{suffix}.weight").name == "Q4_K"
    assert plan.type_of("output.weight").name == "Q6_K"
    assert plan.type_of("token_embd.weight").name == "Q4_K"  # untied: the default type
    q2 = plan_tensor_types("Q2_K", specs, hparams)
    assert q2.type_of("blk.3.attn_output.weight").name == "Q5_K"
    assert q2.type_of("blk.3.attn_v.weight").name == "Q8_0"
    # Four experts: none of the 8-expert bumps.
    four = plan_tensor_types("Q4_K_M", specs, ModelHparams(n_layer, 32, 8, n_expert=4))
    assert four.type_of("blk.3.attn_k.weight").name == "Q4_K"
    assert four.type_of("blk.3.attn_output.weight").name == "Q4_K"


def test_expert_tensor_outside_the_layers_is_an_error() -> None:
    specs = [TensorSpec("blk.7.ffn_down.0.weight", (256, 256))]
    with pytest.raises(UnsupportedError, match="blk.7.ffn_down.0.weight"):
        plan_tensor_types("Q4_K_M", specs, ModelHparams(4, 4, 4, n_expert=8))


def test_float_targets_and_kept_tensors(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "moe.gguf", n_experts=4)
    header = read_gguf_header(path)
    specs = [TensorSpec(s.name, s.shape, "F16" if "norm" in s.name else s.type)
             for s in gguf_tensor_specs(header)]
    assert sorted((s.name, s.shape) for s in specs) == sorted(
        (s.name, s.shape) for s in llama_tensor_specs(n_layer=2, n_embd=64, n_ff=128, n_head=4,
                                                      n_head_kv=2, n_vocab=64, n_expert=4))
    plan = plan_tensor_types("BF16", specs, gguf_hparams(header))
    for tensor in plan.tensors:
        expected = ("F16" if "norm" in tensor.name
                    else "F32" if "gate_inp" in tensor.name else "BF16")
        assert tensor.type.name == expected, tensor.name
        assert tensor.quantized == (expected == "BF16")
    assert plan.writable and plan.unwritable_types == []


def test_sizes_and_bits_per_weight() -> None:
    specs = [TensorSpec("blk.0.attn_q.weight", (256, 256)), TensorSpec("a_norm.weight", (7,))]
    plan = plan_tensor_types("Q8_0", specs, ModelHparams(1))
    assert plan.tensor_bytes == 256 * 256 // 32 * 34 + 7 * 4
    assert plan.data_bytes() == 256 * 256 // 32 * 34 + 32  # the 28-byte norm is padded
    assert plan.bits_per_weight == pytest.approx(8 * plan.tensor_bytes / (256 * 256 + 7))
    assert plan.type_counts == {"Q8_0": 1, "F32": 1}


# `llama-quantize --help` lists each type's size for Llama-3-8B in GiB (F16: 16.07 GB).
PUBLISHED_LLAMA3_8B_GIB = {
    "Q2_K": 2.96, "Q3_K_S": 3.41, "Q3_K_M": 3.74, "Q3_K_L": 4.03, "Q4_0": 4.34, "Q4_1": 4.78,
    "Q4_K_S": 4.37, "Q4_K_M": 4.58, "Q5_0": 5.21, "Q5_1": 5.65, "Q5_K_S": 5.21, "Q5_K_M": 5.33,
    "Q6_K": 6.14, "Q8_0": 7.96, "F16": 14.96,
}


@pytest.mark.parametrize("target", list(PUBLISHED_LLAMA3_8B_GIB))
def test_sizes_match_llama_cpp_s_published_table(target: str) -> None:
    specs = llama_tensor_specs(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8,
                               n_vocab=128256)
    plan = plan_tensor_types(target, specs, ModelHparams(32, 32, 8))
    assert plan.tensor_bytes / 2**30 == pytest.approx(PUBLISHED_LLAMA3_8B_GIB[target], abs=0.015)


def test_target_table() -> None:
    assert list(TARGETS) == ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1",
                             "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M",
                             "Q3_K_S", "Q2_K"]
    assert get_target("q4_k_m").file_type == LlamaFileType.MOSTLY_Q4_K_M
    assert get_target("Q4_K") is TARGETS["Q4_K_M"]  # llama-quantize's alias
    assert get_target("F32").file_type == LlamaFileType.ALL_F32
    assert TARGETS["Q3_K_L"].default_type.name == "Q3_K"
    # Every target is writable: every type any of them chooses has a quantizer.
    assert [t.name for t in TARGETS.values() if t.writable] == list(TARGETS)
    assert TARGETS["Q4_0"].possible_types == {"Q4_0", "Q6_K", "Q8_0"}
    assert TARGETS["Q6_K"].possible_types == {"Q6_K", "Q8_0"}
    assert TARGETS["Q4_K_M"].possible_types >= {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}
    with pytest.raises(OptionError) as caught:
        get_target("Q4_K_X")
    message = str(caught.value)
    assert "Q4_K_X" in message and all(name in message for name in TARGETS)


def test_fallback_order() -> None:
    for requested, expected in [("Q2_K", "Q4_0"), ("Q3_K", "Q4_0"), ("Q4_K", "Q5_0"),
                                ("Q5_K", "Q5_1"), ("Q6_K", "Q8_0"), ("IQ2_XS", "IQ4_NL"),
                                ("TQ1_0", "Q4_0")]:
        choice = fitting_type(requested, 576, "t")
        assert (choice.chosen.name, choice.fell_back) == (expected, True)
        assert choice.reason == (f"t: row length 576 is not a multiple of 256 (required for "
                                 f"{requested}); falling back to {expected}")
    assert fitting_type("Q4_K", 40).chosen.name == "F16"  # Q5_0 does not fit 40 either
    assert fitting_type("Q8_0", 40).chosen.name == "F16"
    assert "no block type fits" in (fitting_type("Q8_0", 40).reason or "")
    fits = fitting_type("Q4_K", 512)
    assert fits.chosen.name == "Q4_K" and not fits.fell_back and fits.reason is None
    with pytest.raises(UnsupportedError, match="no fallback"):
        fitting_type("Q8_K", 100)


def test_bad_hparams_and_metadata(tmp_path: Path) -> None:
    with pytest.raises(OptionError):
        ModelHparams(0)
    with pytest.raises(OptionError):
        ModelHparams(4, n_head=-1)
    path = tmp_path / "noblocks.gguf"
    make_gguf(path)
    header = read_gguf_header(path)
    header.fields.pop("llama.block_count")
    with pytest.raises(FormatError, match="block count"):
        gguf_hparams(header)
    falcon = plan_tensor_types("Q4_K_M", _smollm2_specs(), ModelHparams(30, arch="falcon"))
    assert falcon.approximate and "falcon" in falcon.approximate


def test_table_and_planner_do_not_import_torch() -> None:
    # The GUI shows sizes and fit for every target without paying for torch at start-up.
    code = """
import sys
from app.core.quant import TARGETS, ModelHparams, llama_tensor_specs, plan_tensor_types
specs = llama_tensor_specs(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=4, n_vocab=64)
plan = plan_tensor_types("Q4_K_M", specs, ModelHparams(2, 4, 4))
print(plan.tensor_bytes > 0, [t.name for t in TARGETS.values() if t.writable][-1],
      "torch" in sys.modules)
from app.core.quant import quantize
print("torch" in sys.modules, callable(quantize))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "Q2_K", "False", "True", "True"]


def test_writable_types_are_the_quantizers() -> None:
    from app.core.quant import WRITABLE_TYPES, codec

    assert set(codec.QUANTIZERS) == WRITABLE_TYPES


def test_the_quick_superset_holds_every_type_a_plan_gives() -> None:
    from app.core.quant.mixes import types_a_plan_can_give, types_a_target_can_choose
    from app.core.quant.types import can_quantize

    for target in TARGETS.values():
        assert types_a_target_can_choose(target) <= types_a_plan_can_give(target), target.name
        # The quick answer is the one planning gives.
        assert target.writable == all(can_quantize(t) for t in target.possible_types)
