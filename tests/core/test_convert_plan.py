"""Planning: what is refused before a byte is written, names, sizes and memory estimates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import factories
from app.core.convert import (
    ConvertRequest,
    default_output_name,
    plan_conversion,
    plan_for_type,
)
from app.core.errors import BadInputError, FormatError, OptionError, UnsupportedError
from app.core.formats.scan import inspect_path
from app.core.jobs import RecordingReporter, run_job


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_default_output_names(tiny_models: dict[str, Path], smollm2_gguf: Path) -> None:
    hf = inspect_path(tiny_models["llama"])
    assert default_output_name(hf, "Q8_0") == "tiny-llama-Q8_0.gguf"
    gguf_model = inspect_path(smollm2_gguf)
    assert default_output_name(gguf_model, "Q8_0") == "SmolLM2-135M-Instruct-Q8_0.gguf"
    assert default_output_name(gguf_model, "F16", "hf") == "SmolLM2-135M-Instruct-hf"


def test_plan_lists_every_tensor_with_sizes(tiny_models: dict[str, Path],
                                            tmp_path: Path) -> None:
    plan = plan_conversion(tiny_models["mixtral"], tmp_path / "m.gguf", out_type="Q8_0")
    names = {t.name for t in plan.tensors}
    assert {"token_embd.weight", "blk.1.ffn_up_exps.weight", "blk.0.ffn_gate_inp.weight"} <= names
    stacked = next(t for t in plan.tensors if t.name == "blk.0.ffn_down_exps.weight")
    assert stacked.shape == (4, 64, 128) and len(stacked.sources) == 4
    assert stacked.n_bytes == 4 * 64 * (128 // 32) * 34
    assert plan.output_bytes > plan.tensor_bytes
    assert plan.to_json()["n_tensors"] == len(plan.tensors)
    json.dumps(plan.to_json())  # serialisable for --dry-run and the GUI
    keys = {e.key for e in plan.metadata}
    assert {"general.architecture", "general.file_type", "llama.expert_count",
            "tokenizer.ggml.tokens"} <= keys
    # streaming needs about one chunk over the process baseline, loading all needs the model
    assert plan.estimated_peak_bytes < plan.naive_peak_bytes
    assert plan.estimated_peak_bytes == plan.estimated_peak_ram_bytes


def test_estimate_does_not_grow_with_model_size(tmp_path: Path) -> None:
    small = factories.make_hf_model(tmp_path / "s", "llama", num_hidden_layers=2,
                                    with_tokenizer=False)
    deep = factories.make_hf_model(tmp_path / "d", "llama", num_hidden_layers=12,
                                   with_tokenizer=False)
    a = plan_conversion(small, tmp_path / "s.gguf", out_type="Q8_0")
    b = plan_conversion(deep, tmp_path / "d.gguf", out_type="Q8_0")
    assert b.input_bytes > 4 * a.input_bytes
    assert b.estimated_peak_bytes == a.estimated_peak_bytes
    assert b.naive_peak_bytes > a.naive_peak_bytes


def test_unknown_architecture_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(tiny_models["llama"], tmp_path / "odd")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "gpt_bigcode"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="gpt_bigcode.*cannot be converted"):
        plan_conversion(model, tmp_path / "x.gguf")


@pytest.mark.parametrize(("name", "shape", "error", "message"), [
    ("model.layers.0.mystery.weight", (4, 4), UnsupportedError,
     "model.layers.0.mystery.weight"),
    ("model.layers.1.mlp.up_proj.weight", (100, 64), FormatError,
     r"up_proj.*\[100, 64\].*\[128, 64\]"),
], ids=["unmapped-name", "unexpected-shape"])
def test_an_unmapped_or_misshapen_tensor_is_named(tiny_models: dict[str, Path], tmp_path: Path,
                                                   name: str, shape: tuple[int, int],
                                                   error: type[Exception], message: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model = copy_model(tiny_models["llama"], tmp_path / "odd")
    tensors = load_file(model / "model.safetensors")
    tensors[name] = torch.zeros(shape)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(error, match=message):
        plan_conversion(model, tmp_path / "x.gguf")


def test_corrupt_and_missing_shards_are_refused(tmp_path: Path) -> None:
    model = factories.make_hf_model(tmp_path / "sharded", "llama", max_shard_size="60KB")
    shards = sorted(model.glob("model-*.safetensors"))
    assert len(shards) > 1
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(FormatError, match="truncated"):
        plan_conversion(model, tmp_path / "x.gguf")
    shards[1].unlink()
    with pytest.raises(FormatError, match="missing shard"):
        plan_conversion(model, tmp_path / "x.gguf")


def test_output_that_would_overwrite_an_input_is_refused(smollm2_gguf: Path,
                                                         tiny_models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="overwrite the model"):
        plan_conversion(smollm2_gguf, smollm2_gguf, out_type="Q8_0", overwrite=True)
    model = tiny_models["llama"]
    with pytest.raises(BadInputError, match="overwrite the model"):
        plan_conversion(model, model / "model.safetensors", out_type="Q8_0", overwrite=True)
    gguf_copy = tmp_path / "in" / "m.gguf"
    gguf_copy.parent.mkdir()
    shutil.copy(smollm2_gguf, gguf_copy)
    with pytest.raises(BadInputError, match="holds the input m.gguf"):
        plan_conversion(gguf_copy, tmp_path / "in", to="hf", overwrite=True)
    # a new file inside the input folder is fine: it overwrites nothing
    plan = plan_conversion(model, model / "tiny-Q8_0.gguf", out_type="Q8_0")
    assert plan.target.parent == model


def test_existing_output_needs_overwrite(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    target.write_bytes(b"old")
    with pytest.raises(BadInputError, match="already exists"):
        plan_conversion(tiny_models["llama"], target)
    assert plan_conversion(tiny_models["llama"], target, overwrite=True).overwrite


def test_missing_tokenizer_warns_or_stops(tmp_path: Path) -> None:
    model = factories.make_hf_model(tmp_path / "notok", "llama", with_tokenizer=False)
    with pytest.raises(BadInputError, match="no tokenizer files"):
        plan_conversion(model, tmp_path / "x.gguf", require_tokenizer=True)
    reporter = RecordingReporter()
    result = run_job(ConvertRequest(model, tmp_path / "x.gguf", "F16", device="cpu"), reporter)
    assert result.status == "done"
    assert any("no tokenizer" in w for w in reporter.messages("warning"))


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"out_type": "Q9_9"}, OptionError, "unknown target type 'Q9_9'"),
    ({"out_type": "IQ2_XXS"}, OptionError, "unknown target type 'IQ2_XXS'.*Q4_K_M"),
    ({"out_type": "Q8_0", "to": "hf"}, OptionError, "safetensors output is written as"),
    ({"device": "tpu"}, OptionError, "device .tpu. is not one of"),
    ({"keep_type": "*norm*"}, OptionError, "GGUF → GGUF"),
])
def test_nonsense_options(kwargs: dict[str, str], error: type[Exception], text: str,
                          tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(error, match=text):
        plan_conversion(tiny_models["llama"], tmp_path / "x.gguf", **kwargs)  # type: ignore[arg-type]


def test_keep_type_glob_and_regex(smollm2_gguf: Path, tmp_path: Path) -> None:
    glob = plan_conversion(smollm2_gguf, tmp_path / "a.gguf", out_type="Q8_0",
                           keep_type="blk.1.*")
    regex = plan_conversion(smollm2_gguf, tmp_path / "a.gguf", out_type="Q8_0",
                            keep_type=r"re:blk\.1\..*")
    kept = {t.name for t in glob.tensors if t.note and "--keep-type" in t.note}
    assert kept == {t.name for t in regex.tensors if t.note and "--keep-type" in t.note}
    assert kept and all(n.startswith("blk.1.") for n in kept)
    with pytest.raises(OptionError, match="matches no tensor"):
        plan_conversion(smollm2_gguf, tmp_path / "a.gguf", out_type="Q8_0", keep_type="nope*")


def test_pickle_checkpoints_are_refused_and_bnb_ones_dequantized(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    plan = plan_conversion(tiny_models["llama-bnb4"], tmp_path / "x.gguf")
    assert sum(1 for t in plan.tensors if t.slices[0].dtype == "NF4") == 14
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"model_type": "llama"}')
    (pickled / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UnsupportedError, match="pickle"):
        plan_conversion(pickled, tmp_path / "x.gguf")


def test_plan_for_type_matches_a_fresh_plan(tmp_path: Path) -> None:
    source = factories.make_hf_model(tmp_path / "odd", "llama", hidden_size=48,
                                     intermediate_size=64, head_dim=12, with_tokenizer=False)
    base = plan_conversion(source, tmp_path / "x.gguf", out_type="F16")
    for out_type in ("Q8_0", "BF16", "F32"):
        fresh = plan_conversion(source, tmp_path / "x.gguf", out_type=out_type)
        derived = plan_for_type(base, out_type)
        assert [(t.name, t.out_type, t.n_bytes, t.copy, t.fallback) for t in derived.tensors] == \
            [(t.name, t.out_type, t.n_bytes, t.copy, t.fallback) for t in fresh.tensors]
        assert derived.output_bytes == fresh.output_bytes
        assert derived.estimated_peak_bytes == fresh.estimated_peak_bytes
        file_type = {e.key: e.value for e in derived.metadata}["general.file_type"]
        assert file_type == {e.key: e.value for e in fresh.metadata}["general.file_type"]
