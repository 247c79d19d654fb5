"""bitsandbytes checkpoints → plain HF safetensors and → GGUF: the values are bitsandbytes'
own dequantization, transformers loads and generates the HF result, llama.cpp the GGUF one, the
log says which modules were dequantized and that the errors stack; broken checkpoints stop
before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import factories
from app.core.convert import ConvertRequest, plan_conversion
from app.core.errors import FormatError
from app.core.jobs import RecordingReporter, run_job


def _convert(source: Path, target: Path, out_type: str, to: str = "gguf",
             pure: bool = False) -> RecordingReporter:
    reporter = RecordingReporter()
    ConvertRequest(source, target, out_type, to=to, device="cpu", pure=pure).run(reporter)
    return reporter


def _bnb_reference(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of the checkpoint as bitsandbytes itself dequantizes it (float32)."""
    import bitsandbytes.functional as F
    from safetensors.torch import load_file

    tensors = load_file(folder / "model.safetensors")
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if ".quant_state." in name:
            weight = name.split(".quant_state.")[0]
            parts = {k[len(weight) + 1:]: v for k, v in tensors.items()
                     if k.startswith(f"{weight}.")}
            state = F.QuantState.from_dict(parts, torch.device("cpu"))
            out[weight] = F.dequantize_4bit(tensors[weight], state).float()
        elif name.endswith(".SCB"):
            module = name.removesuffix(".SCB")
            out[f"{module}.weight"] = F.int8_vectorwise_dequant(tensors[f"{module}.weight"],
                                                                value)
    for name, value in tensors.items():
        if value.is_floating_point() and name not in out and "." in name and not any(
                name.endswith(s) for s in (".absmax", ".quant_map", ".nested_absmax",
                                           ".nested_quant_map", ".SCB")):
            out[name] = value.float()
    return out


@pytest.mark.parametrize("variant", ["llama-bnb4", "llama-bnb8"])
def test_bnb_to_hf_writes_bitsandbytes_values_and_a_clean_config(
        variant: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = tiny_models[variant]
    target = tmp_path / "out-hf"
    reporter = _convert(source, target, "F32", to="hf")
    written = load_file(target / "model.safetensors")
    reference = _bnb_reference(source)
    assert set(written) == set(reference)
    for name, values in reference.items():
        assert written[name].dtype == torch.float32
        assert torch.equal(written[name], values), name
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (target / "tokenizer.json").is_file()
    info = reporter.messages("info")
    assert any("dequantized 14 bitsandbytes" in m and "model.layers.*.self_attn" in m
               and "model.layers.*.mlp" in m for m in info)
    assert any("quantizing it again adds a second error" in m for m in info)


def test_bnb_to_hf_loads_and_generates_in_transformers(tiny_models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    target = tmp_path / "out-hf"
    _convert(tiny_models["llama-bnb4"], target, "F16", to="hf")
    model = AutoModelForCausalLM.from_pretrained(target)
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float16
    with torch.no_grad():
        out = model.generate(torch.tensor([[1, 5, 9, 17]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_bnb_to_gguf_f32_holds_the_dequantized_weights(tiny_models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    import gguf
    import numpy as np

    source = tiny_models["llama-bnb4"]
    target = tmp_path / "bnb.gguf"
    reporter = _convert(source, target, "F32", pure=True)
    reference = _bnb_reference(source)
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(target).tensors}
    v_proj = reference["model.layers.1.self_attn.v_proj.weight"].numpy()
    assert np.array_equal(tensors["blk.1.attn_v.weight"], v_proj)
    # Q rows are permuted for llama.cpp's rotary embedding, after dequantization
    q_proj = reference["model.layers.0.self_attn.q_proj.weight"].numpy()
    heads = 4
    permuted = q_proj.reshape(heads, 2, -1, 64).swapaxes(1, 2).reshape(64, 64)
    assert np.array_equal(tensors["blk.0.attn_q.weight"], permuted)
    assert any("carries the bitsandbytes quantization error" in m
               for m in reporter.messages("info"))


def test_bnb_gguf_loads_in_llama_cpp_and_matches_the_dequantized_model(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is absent")
    from transformers import AutoModelForCausalLM

    source = tiny_models["llama-bnb4"]
    hf = tmp_path / "hf"
    _convert(source, hf, "F32", to="hf")
    _convert(source, tmp_path / "bnb-f32.gguf", "F32", pure=True)
    _convert(source, tmp_path / "bnb-f16.gguf", "F16")
    _convert(source, tmp_path / "bnb-q8.gguf", "Q8_0")
    prompt = [1, 5, 9, 17, 33]
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6,
                                  do_sample=False)[0][len(prompt):].tolist()
    for name in ("bnb-f32.gguf", "bnb-f16.gguf"):
        llm = llama_cpp.Llama(str(tmp_path / name), verbose=False, n_ctx=256, n_threads=2)
        tokens = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            tokens.append(token)
            if len(tokens) == 6:
                break
        assert tokens == expected, name
    # Generating with any 64-wide Q8_0 model crashes this llama.cpp build (the tiny HF llama
    # converted to Q8_0 too), so the Q8_0 file is only loaded.
    llm = llama_cpp.Llama(str(tmp_path / "bnb-q8.gguf"), verbose=False, n_ctx=256, n_threads=2)
    assert llm.n_vocab() == 320


def _without(source: Path, target: Path, drop: str) -> Path:
    from safetensors.torch import load_file, save_file

    target.mkdir()
    for item in source.iterdir():
        if item.name != "model.safetensors":
            (target / item.name).write_bytes(item.read_bytes())
    tensors = load_file(source / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != drop}, target / "model.safetensors",
              metadata={"format": "pt"})
    return target


@pytest.mark.parametrize(("dropped", "reason"), [
    ("model.layers.1.mlp.up_proj.weight.absmax", "4-bit weight without its absmax"),
    ("model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__nf4",
     "4-bit weight without its quant_state"),
    ("model.layers.1.mlp.up_proj.weight.nested_absmax", "without its nested_absmax"),
])
def test_a_broken_bnb_checkpoint_stops_before_writing(
        dropped: str, reason: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    broken = _without(tiny_models["llama-bnb4"], tmp_path / "broken", dropped)
    for to, out_type in (("gguf", "Q8_0"), ("hf", "F16")):
        with pytest.raises(FormatError, match=reason) as caught:
            plan_conversion(broken, tmp_path / f"out-{to}", out_type=out_type, to=to)
        assert caught.value.tensor == "model.layers.1.mlp.up_proj.weight"
        assert not (tmp_path / f"out-{to}").exists()


def test_an_int8_checkpoint_without_scales_is_refused(tiny_models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    broken = _without(tiny_models["llama-bnb8"], tmp_path / "broken",
                      "model.layers.0.self_attn.k_proj.SCB")
    with pytest.raises(FormatError, match="8-bit weight without its SCB") as caught:
        plan_conversion(broken, tmp_path / "out.gguf", out_type="Q8_0")
    assert caught.value.tensor == "model.layers.0.self_attn.k_proj.weight"


def test_an_unknown_quant_type_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = _without(tiny_models["llama-bnb4"], tmp_path / "broken", "")
    tensors = load_file(broken / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"
    tensors[key.replace("nf4", "af4")] = tensors.pop(key)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FormatError, match="unknown bitsandbytes quant_type 'af4'") as caught:
        plan_conversion(broken, tmp_path / "out.gguf", out_type="Q8_0")
    assert caught.value.tensor == "model.layers.0.mlp.down_proj.weight"


def test_an_fp4_checkpoint_converts_too(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    source = factories.make_bnb_model(tiny_models["llama"], tmp_path / "fp4", quant_type="fp4",
                                      double_quant=False)
    _convert(source, tmp_path / "hf", "F32", to="hf")
    written = load_file(tmp_path / "hf" / "model.safetensors")
    for name, values in _bnb_reference(source).items():
        assert torch.equal(written[name], values), name


def test_quantized_tensors_of_any_module_are_dequantized(tiny_models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A multimodal checkpoint quantizes its vision tower too: every 4-bit weight is found by
    its companions, whatever its name, and the log lists each module touched."""
    from safetensors.torch import load_file, save_file

    folder = _without(tiny_models["llama-bnb4"], tmp_path / "with-vision", "")
    tensors = load_file(folder / "model.safetensors")
    source = "model.layers.0.mlp.up_proj.weight"
    vision = "model.vision_tower.encoder.layers.0.fc1.weight"
    for name in [k for k in tensors if k == source or k.startswith(f"{source}.")]:
        tensors[vision + name[len(source):]] = tensors[name].clone()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    reporter = _convert(folder, tmp_path / "hf", "F32", to="hf")
    written = load_file(tmp_path / "hf" / "model.safetensors")
    reference = _bnb_reference(folder)
    assert torch.equal(written[vision], reference[vision])
    assert torch.equal(written[vision], written[source])
    assert not any(k.startswith(f"{vision}.") for k in written)  # no companions left
    touched = next(m for m in reporter.messages("info") if "dequantized 15 bitsandbytes" in m)
    assert "model.vision_tower.encoder.layers.*" in touched


def test_retyping_a_bnb_to_hf_plan_updates_the_config_dtype(tiny_models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    from app.core.convert import plan_for_type

    plan = plan_conversion(tiny_models["llama-bnb4"], tmp_path / "hf", out_type="F16", to="hf")
    assert plan.hf_output is not None and plan.hf_output.config["dtype"] == "float16"
    retyped = plan_for_type(plan, "BF16", tmp_path / "hf-bf16")
    assert retyped.hf_output is not None and retyped.hf_output.config["dtype"] == "bfloat16"
    assert retyped.target == tmp_path / "hf-bf16"
    assert {t.out_type for t in retyped.tensors} == {"BF16"}
    assert "quantization_config" not in retyped.hf_output.config


@pytest.mark.parametrize("model", ["llama-bnb4", "llama-bnb8"])
def test_a_size_target_measures_bitsandbytes_weights(model: str, tiny_models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """The size target samples rows of every weight to measure its error: packed 4-bit and
    int8 rows must be dequantized as the conversion itself does."""
    from app.core.convert.planner import plan_for_type

    base = plan_conversion(tiny_models[model], tmp_path / "x.gguf", out_type="Q8_0")
    budget = plan_for_type(base, "Q4_0").output_bytes * 11 // 10
    target = tmp_path / "fit.gguf"
    result = run_job(ConvertRequest(tiny_models[model], target, "Q8_0", device="cpu",
                                    target_size=budget), RecordingReporter())
    assert result.status == "done", result.error
    assert target.stat().st_size <= budget
