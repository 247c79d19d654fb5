"""The compatibility doctor on checkpoints broken on purpose."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import transformers

from app.core.errors import OptionFact
from app.core.generate.doctor import DoctorReport, diagnose
from app.core.generate.doctor_hf import probe_bitsandbytes, quantization_findings
from app.core.generate.findings import Finding
from app.core.generate.request import GenerateRequest
from app.core.jobs import RecordingReporter, run_job
from factories import drop_tensors, make_gguf, make_gguf_from_hf, make_hf_model


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed")


def by_code(report: DoctorReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert found, [str(f) for f in report.findings]
    return found[0]


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_healthy_models_have_no_errors(tiny_models: dict[str, Path]) -> None:
    for name in ("llama", "mixtral", "llama-bnb4", "llama-bnb8"):
        report = diagnose(tiny_models[name], use_gpu=False)
        assert report.ok, (name, [str(f) for f in report.findings])
        assert report.backend == "transformers"


def test_tied_embeddings_are_not_reported_missing(tmp_path: Path) -> None:
    folder = make_hf_model(tmp_path / "tied", "qwen2", tie_word_embeddings=True)
    assert diagnose(folder, use_gpu=False).findings == ()


def test_dropped_attention_and_norm_tensors_are_named_one_by_one(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(tiny_models["llama"], tmp_path / "merged")
    dropped = ["model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight",
               "model.layers.1.self_attn.k_proj.weight", "model.norm.weight"]
    drop_tensors(folder / "model.safetensors", dropped)
    report = diagnose(folder, use_gpu=False)
    finding = by_code(report, "missing-tensors")
    assert finding.severity == "error" and not report.ok
    assert finding.tensors == tuple(sorted(dropped))
    assert "4 tensor(s) that LlamaForCausalLM needs" in finding.text
    assert all(name in finding.text for name in dropped)
    # and loading it is refused with the same names rather than generating garbage
    result = run_job(GenerateRequest(folder, "hello"), RecordingReporter())
    assert result.status == "failed"
    assert all(name in result.error for name in dropped)


def test_a_dropped_expert_is_named_through_the_stacking_transformers_does(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(tiny_models["mixtral"], tmp_path / "moe-merge")
    name = "model.layers.1.block_sparse_moe.experts.2.w3.weight"
    drop_tensors(folder / "model.safetensors", [name])
    finding = by_code(diagnose(folder, use_gpu=False), "missing-tensors")
    assert finding.tensors == (name,)


def test_a_class_missing_from_transformers_suggests_the_version_that_saved_it(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(tiny_models["llama"], tmp_path / "future")
    edit_config(folder, architectures=["NopeForCausalLM"], model_type="nope",
                transformers_version="99.1.0")
    report = diagnose(folder, use_gpu=False)
    finding = by_code(report, "unknown-class")
    assert finding.severity == "error"
    assert f"transformers {transformers.__version__} has no class NopeForCausalLM" in finding.text
    assert finding.action == ("install a transformers that has it: pip install "
                              "'transformers>=99.1.0'")
    assert by_code(report, "newer-transformers").severity == "warning"
    assert by_code(report, "tensor-check-skipped")


def test_a_removed_class_points_to_the_version_that_saved_the_checkpoint(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(tiny_models["llama"], tmp_path / "old")
    edit_config(folder, architectures=["OldLlamaForCausalLM"], transformers_version="4.30.0")
    finding = by_code(diagnose(folder, use_gpu=False), "unknown-class")
    assert "transformers==4.30.0" in str(finding.action)


REMOTE_CODE = '''
raise SystemExit("the doctor must never run this file")
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_attn_mask_utils import (
    _prepare_4d_causal_attention_mask_with_cache_position,
)
from transformers import PreTrainedModel


class CustomForCausalLM(PreTrainedModel):
    def forward(self, input_ids, past_key_values=None, cache_position=None):
        cache = DynamicCache.from_legacy_cache(past_key_values)
        mask = create_causal_mask(config=self.config, inputs_embeds=input_ids,
                                  attention_mask=None, past_key_values=cache,
                                  cache_position=cache_position)
        return mask
'''


def test_remote_code_is_checked_statically_against_the_installed_transformers(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(tiny_models["llama"], tmp_path / "custom")
    edit_config(folder, architectures=["CustomForCausalLM"], model_type="custom",
                auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "modeling_custom.py").write_text(REMOTE_CODE)
    report = diagnose(folder, use_gpu=False)
    remote = by_code(report, "remote-code")
    assert remote.action.startswith("allow remote code")
    assert remote.option == OptionFact("trust_remote_code", True)
    texts = [f.text for f in report.findings if f.code == "remote-code-incompatible"]
    joined = "\n".join(texts)
    assert "_prepare_4d_causal_attention_mask_with_cache_position" in joined
    assert "DynamicCache.from_legacy_cache" in joined
    assert "passes cache_position= to create_causal_mask" in joined
    assert "unexpected keyword argument 'cache_position'" in joined
    assert "CustomForCausalLM.forward takes cache_position" in joined
    assert all(":" in t for t in texts)  # file:line of each
    # without trust, generation refuses to run the model's code at all
    result = run_job(GenerateRequest(folder, "hi"), RecordingReporter())
    assert result.status == "failed" and result.exit_code == 2
    assert "allow remote code" in result.error and "--" not in result.error
    assert result.option == OptionFact("trust_remote_code", True)


def test_pickle_only_weights_are_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama",
                                                    "architectures": ["LlamaForCausalLM"]}))
    # not even a valid pickle: proving it is never unpickled
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle at all")
    report = diagnose(folder, use_gpu=False)
    finding = by_code(report, "pickle-weights")
    assert finding.severity == "error" and "never unpickles" in finding.text
    assert report.backend is None
    result = run_job(GenerateRequest(folder, "hi"), RecordingReporter())
    assert result.status == "failed" and result.exit_code == 2


def test_bitsandbytes_runs_its_kernels_on_the_cpu() -> None:
    assert probe_bitsandbytes("cpu", 4) is None
    assert probe_bitsandbytes("cpu", 8) is None
    config = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}
    assert quantization_findings(config, "cpu") == []


@pytest.mark.skipif(torch_has_cuda(), reason="the probe must fail: needs a torch without CUDA")
def test_a_device_bitsandbytes_cannot_run_on_is_reported() -> None:
    # On this CPU-only torch a CUDA probe fails for real (no kernel can run there); the
    # same path reports a bitsandbytes build without CUDA kernels on a GPU machine.
    config = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
    finding = quantization_findings(config, "cuda:0")[0]
    assert finding.code == "bitsandbytes-no-kernel" and finding.severity == "error"
    assert "cannot run 8-bit weights on cuda:0" in finding.text
    assert "CUDA" in finding.text


def test_an_unknown_quantization_method_is_an_error() -> None:
    config = {"quantization_config": {"quant_method": "magic"}}
    assert quantization_findings(config, "cpu")[0].code == "unknown-quantization"


@needs_llama_cpp
def test_a_gguf_architecture_llama_cpp_does_not_know(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "foo.gguf", arch="foo")
    report = diagnose(path, use_gpu=False)
    finding = by_code(report, "unknown-gguf-architecture")
    assert "does not know the architecture 'foo'" in finding.text
    assert "upgrade llama-cpp-python" in str(finding.action)
    result = run_job(GenerateRequest(path, "hi"), RecordingReporter())
    assert result.status == "failed" and result.exit_code == 2
    assert "does not know the architecture 'foo'" in result.error


def test_a_gguf_missing_tensors_is_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    # blk.1.attn_norm: the other block has it; output_norm: only the architecture says so.
    path = make_gguf_from_hf(tiny_models["llama"], tmp_path / "broken.gguf",
                             drop=("blk.1.attn_norm.weight", "output_norm.weight"))
    finding = by_code(diagnose(path, use_gpu=False), "missing-tensors")
    assert finding.tensors == ("blk.1.attn_norm.weight", "output_norm.weight")


@needs_llama_cpp
def test_loading_a_gguf_missing_a_tensor_names_it(tiny_models: dict[str, Path],
                                                  tmp_path: Path) -> None:
    path = make_gguf_from_hf(tiny_models["llama"], tmp_path / "broken.gguf",
                             drop=("blk.0.attn_q.weight",))
    result = run_job(GenerateRequest(path, "hi"), RecordingReporter())
    assert result.status == "failed" and result.exit_code == 2
    assert "'blk.0.attn_q.weight'" in result.error and "doctor" in result.error


def test_healthy_ggufs_pass(tiny_llama_ggufs: dict[str, Path], smollm2_gguf: Path) -> None:
    for path in (tiny_llama_ggufs["Q4_0"], smollm2_gguf):
        report = diagnose(path, use_gpu=False)
        assert report.ok and not [f for f in report.findings if f.severity != "info"], \
            [str(f) for f in report.findings]


def test_an_unexpected_keyword_from_transformers_becomes_a_sentence(tmp_path: Path) -> None:
    from transformers.masking_utils import create_causal_mask

    from app.core.generate.backends.hf import translate_load_error

    with pytest.raises(TypeError) as caught:  # what old model code does with 5.x
        create_causal_mask(config=None, inputs_embeds=None, attention_mask=None,
                           past_key_values=None, cache_position=None)
    error = translate_load_error(caught.value, tmp_path)
    assert error.exit_code == 1
    assert "passes the keyword 'cache_position'" in str(error)
    assert f"transformers {transformers.__version__} does not accept" in str(error)


def test_built_in_architectures_accept_both_keywords_that_break_old_model_code(
        tiny_models: dict[str, Path]) -> None:
    # Why the doctor checks only a model's own code for these keywords: the installed
    # transformers' own classes take them (through **kwargs), so only code written against
    # other versions fails. If this changes, the doctor needs a check for built-in classes.
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 6, 7]])
    for name in ("llama", "mixtral"):
        model = AutoModelForCausalLM.from_pretrained(tiny_models[name])
        with torch.inference_mode():
            for keyword in ({"output_router_logits": True}, {"cache_position": torch.arange(4)}):
                logits = model(ids, **keyword).logits  # a TypeError here fails the test
                assert logits.shape == (1, 4, model.config.vocab_size)
