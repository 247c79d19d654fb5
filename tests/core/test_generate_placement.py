"""The placement planner on synthetic plans: which layer goes where, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import InsufficientResourcesError
from app.core.formats.model_info import ModelInfo, TensorInfo
from app.core.formats.scan import inspect_path
from app.core.generate.placement import (
    DeviceBudget,
    PlacementUnit,
    complete_device_map,
    hf_placement_units,
    plan_placement,
    usable_bytes,
)

MIB = 1024**2


def model_units(n_layers: int, layer_mib: int, embed_mib: int = 10,
                head_mib: int = 10) -> list[PlacementUnit]:
    return ([PlacementUnit("model.embed_tokens", ("model.embed_tokens",), embed_mib * MIB)]
            + [PlacementUnit(f"layer {i}", (f"model.layers.{i}",), layer_mib * MIB,
                             is_layer=True) for i in range(n_layers)]
            + [PlacementUnit("model.norm", ("model.norm",), 1),
               PlacementUnit("lm_head", ("lm_head",), head_mib * MIB)])


def no_margin(free_mib: int, index: int = 0) -> DeviceBudget:
    return DeviceBudget(index, free_mib * MIB)


def plan(units: list[PlacementUnit], gpus: list[DeviceBudget], **kwargs: int):
    return plan_placement(units, gpus, reserve_bytes=0, reserve_fraction=0.0, **kwargs)


def test_one_gpu_takes_leading_layers_in_order_and_the_rest_goes_to_the_cpu() -> None:
    placement = plan(model_units(8, 100), [no_margin(410)])
    # embeddings (10) + 4 layers (400) fill 410 MiB exactly; layer 4 on no longer fits.
    assert [placement.device_map[f"model.layers.{i}"] for i in range(8)] == [0] * 4 + ["cpu"] * 4
    assert placement.device_map["model.embed_tokens"] == 0
    assert placement.device_map["lm_head"] == "cpu"
    assert placement.gpu_layers == 4 and placement.n_layers == 8
    assert placement.bytes_by_device == {0: 410 * MIB, "cpu": 400 * MIB + 1 + 10 * MIB}
    assert placement.max_memory[0] == 410 * MIB
    assert placement.main_device == "cuda:0"
    assert placement.describe() == ("4 layer(s) on GPU 0 (410.0 MiB), "
                                    "4 layer(s) on the CPU (410.0 MiB)")


def test_two_gpus_fill_in_order_and_never_go_back_after_the_cpu() -> None:
    units = model_units(6, 100)
    placement = plan(units, [no_margin(250, 0), no_margin(250, 1)])
    layers = [placement.device_map[f"model.layers.{i}"] for i in range(6)]
    # GPU 0: embed 10 + 2 layers; GPU 1: 2 layers (a third would be 300 > 250); rest CPU.
    assert layers == [0, 0, 1, 1, "cpu", "cpu"]
    # The small norm would fit on GPU 1, but placement is sequential: after the CPU, CPU.
    assert placement.device_map["model.norm"] == "cpu"
    assert placement.gpu_layers == 4
    assert set(placement.max_memory) == {0, 1, "cpu"}


def test_nothing_fits_puts_everything_on_the_cpu() -> None:
    placement = plan(model_units(4, 100, embed_mib=500), [no_margin(300)])
    assert set(placement.device_map.values()) == {"cpu"}
    assert placement.gpu_layers == 0 and not placement.uses_gpu
    assert placement.main_device == "cpu"


def test_everything_fits_on_the_gpu() -> None:
    placement = plan(model_units(4, 100), [no_margin(10_000)])
    assert set(placement.device_map.values()) == {0}
    assert placement.gpu_layers == 4
    assert "cpu" not in placement.bytes_by_device
    assert placement.max_memory["cpu"] == 0


def test_no_gpu_at_all_is_all_cpu() -> None:
    placement = plan(model_units(3, 100), [])
    assert set(placement.device_map.values()) == {"cpu"}


def test_the_part_left_for_the_cpu_must_fit_in_ram_before_anything_loads() -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        plan(model_units(8, 100), [no_margin(410)], cpu_bytes=300 * MIB)
    assert caught.value.needed_bytes == 410 * MIB + 1
    assert caught.value.available_bytes == 300 * MIB
    assert "410.0 MiB of RAM" in str(caught.value)


def test_the_safety_margin_is_the_larger_of_a_reserve_and_a_fraction() -> None:
    assert usable_bytes(10_000 * MIB, reserve_bytes=512 * MIB, reserve_fraction=0.1) == 9000 * MIB
    assert usable_bytes(1000 * MIB, reserve_bytes=512 * MIB, reserve_fraction=0.1) == 488 * MIB
    assert usable_bytes(100 * MIB, reserve_bytes=512 * MIB) == 0
    placement = plan_placement(model_units(4, 100), [no_margin(1000)], reserve_bytes=512 * MIB)
    assert placement.gpu_layers == 4  # 10 + 4*100 = 410 <= 488
    assert plan_placement(model_units(5, 100), [no_margin(1000)],
                          reserve_bytes=512 * MIB).gpu_layers == 4


def test_units_from_a_real_checkpoint_follow_the_forward_pass(tiny_models: dict[str, Path]) -> None:
    info = inspect_path(tiny_models["llama"])
    units = hf_placement_units(info, 2)  # bf16: every float32 parameter counts 2 bytes
    assert [u.modules for u in units] == [("model.embed_tokens",), ("model.layers.0",),
                                          ("model.layers.1",), ("model.norm",), ("lm_head",)]
    by_name = {t.name: t for t in info.tensors}
    layer0 = sum(t.n_params * 2 for n, t in by_name.items() if n.startswith("model.layers.0."))
    assert units[1].n_bytes == layer0 and units[1].is_layer
    assert units[0].n_bytes == by_name["model.embed_tokens.weight"].n_params * 2


def test_bitsandbytes_weights_count_as_stored_and_their_state_stays_with_the_layer(
        tiny_models: dict[str, Path]) -> None:
    info = inspect_path(tiny_models["llama-bnb4"])
    units = hf_placement_units(info, 4)
    assert [u.modules[0] for u in units if u.is_layer] == ["model.layers.0", "model.layers.1"]
    stored = sum(t.n_bytes for t in info.tensors if t.name.startswith("model.layers.0."))
    assert units[1].n_bytes == stored  # NF4 bytes and absmax/quant_map as stored


def tensor(name: str, n_params: int, dtype: str = "F32") -> TensorInfo:
    return TensorInfo(name, dtype, (n_params,), n_params * 4, n_params)


def test_tied_embeddings_keep_the_head_with_the_embedding() -> None:
    info = ModelInfo("m", Path("m"), "hf", tensors=(
        tensor("model.embed_tokens.weight", 1000), tensor("model.layers.0.mlp.weight", 10),
        tensor("model.norm.weight", 1)), metadata={"tie_word_embeddings": True})
    units = hf_placement_units(info, None)
    assert units[0].modules == ("model.embed_tokens", "lm_head")
    assert units[0].n_bytes == 4000
    placement = plan(units, [no_margin(1)])
    assert placement.device_map["lm_head"] == placement.device_map["model.embed_tokens"]


def test_device_map_is_completed_with_modules_the_checkpoint_does_not_name() -> None:
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu"}
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.weight",
             "model.layers.1.mlp.weight", "model.rotary_emb.inv_freq", "lm_head.weight"]
    completed = complete_device_map(device_map, names)
    assert completed["model.rotary_emb"] == 0 and completed["lm_head"] == 0
    assert completed["model.layers.1"] == "cpu"


def test_llama_cpp_offloads_what_the_fit_verdict_says_fits(tmp_path: Path) -> None:
    """One memory model: the loader's layer count is the verdict's, from the same estimate
    and margins; llama.cpp offloads the output layer first, then blocks from the last."""
    from app.core.estimate import estimate_gguf_run
    from app.core.estimate.verdict import Machine, gpu_layers_that_fit, judge, usable
    from factories import make_gguf

    model = inspect_path(make_gguf(tmp_path / "m.gguf", n_layers=8, n_embd=256, n_ff=1024,
                                   n_vocab=4000, f16=True))
    output = sum(t.n_bytes for t in model.tensors if t.name.startswith("output"))
    assert estimate_gguf_run(model, 512, 1, [64 * 1024 * MIB]).vram[0].weights == output
    counts = []
    for free_mib in (300, 700, 705, 710, 720, 800, 4000):
        free = free_mib * MIB
        layers = gpu_layers_that_fit(model, [free], 16 * 1024 * MIB, 512, runtime="llama.cpp")
        verdict = judge(model, Machine("gpu", 16 * 1024 * MIB, (free,)), 512,
                        runtime="llama.cpp")
        assert verdict.estimate is not None and layers == verdict.estimate.gpu_layers
        if layers:
            needed = estimate_gguf_run(model, 512, layers, [free]).vram[0].total
            assert needed <= usable(free)
        if layers < 9:
            assert estimate_gguf_run(model, 512, layers + 1, [free]).vram[0].total > usable(free)
        counts.append(layers)
    assert counts[0] == 0 and counts[-1] == 9 and any(0 < c < 9 for c in counts)
    assert counts == sorted(counts)
    assert gpu_layers_that_fit(model, [], 16 * 1024 * MIB, 512) == 0


def test_transformers_placement_is_the_fit_estimates(tiny_models: dict[str, Path]) -> None:
    """The loader's device map puts on the GPU the layers the Fit verdict counted, for every
    budget around the point where the last layers stop fitting."""
    from app.core.estimate.transformers_load import estimate_hf_load
    from app.core.estimate.verdict import Machine, judge
    from app.core.generate.backends.hf import plan_hf_placement

    info = inspect_path(tiny_models["llama"])
    ram = 16 * 1024 * MIB
    whole = estimate_hf_load(info, 256, dtype="float32", gpu_free=[ram]).vram[0].total
    layer = max(u.n_bytes for u in hf_placement_units(info, 4) if u.is_layer)
    seen = set()
    for step in range(-8, 3):
        usable_vram = whole + step * layer // 3
        free = int((usable_vram + 256 * MIB) / 0.95) + 1
        placement = plan_hf_placement(info, "float32", (DeviceBudget(0, free),), ram, 256)
        verdict = judge(info, Machine("gpu", ram, (free,)), 256, runtime="transformers")
        assert verdict.estimate is not None
        assert placement.gpu_layers == verdict.estimate.gpu_layers, step
        seen.add(placement.gpu_layers)
    assert seen == {0, 1, 2}
