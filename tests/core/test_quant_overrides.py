"""Per-tensor control as llama-quantize has it: --tensor-type PATTERN=TYPE, --output-tensor-type,
--token-embedding-type; types and bytes against llama.cpp's quantizer with the same options,
and bad values refused by the CLI with exit 2 and the valid values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.convert import ConvertRequest
from app.core.errors import OptionError
from app.core.formats.gguf_header import read_gguf_header
from app.core.jobs import RecordingReporter, run_job
from app.core.quant import gguf_hparams, gguf_tensor_specs, plan_tensor_types
from app.core.quant.overrides import TypeOverrides, parse_tensor_type
from reference_models import ReferenceFiles, tensors_of


def convert(reference_files: ReferenceFiles, model: str, mix: str, out: Path,
            overrides: TypeOverrides) -> dict[str, tuple[str, bytes]]:
    request = ConvertRequest(reference_files.source(model), out, mix, device="cpu",
                             type_overrides=overrides)
    result = run_job(request, RecordingReporter())
    assert result.status == "done", result.error
    return tensors_of(out)


def test_output_and_embedding_types_equal_llama_quantize(reference_files: ReferenceFiles,
                                                         tmp_path: Path) -> None:
    overrides = TypeOverrides.parse(output="Q5_K", token_embedding="q3_k")
    ours = convert(reference_files, "tiny-llama", "Q4_K_M", tmp_path / "o.gguf", overrides)
    theirs = tensors_of(reference_files.custom("tiny-llama", "Q4_K_M", "out-embd",
                                               output_tensor_type="Q5_K",
                                               token_embedding_type="Q3_K"))
    assert ours["output.weight"][0] == "Q5_K" and ours["token_embd.weight"][0] == "Q3_K"
    assert ours == theirs


def test_tied_embeddings_take_the_output_type(reference_files: ReferenceFiles,
                                              tmp_path: Path) -> None:
    overrides = TypeOverrides.parse(output="Q8_0")
    ours = convert(reference_files, "tiny-gqa", "Q3_K_S", tmp_path / "o.gguf", overrides)
    theirs = tensors_of(reference_files.custom("tiny-gqa", "Q3_K_S", "out",
                                               output_tensor_type="Q8_0"))
    assert ours["token_embd.weight"][0] == "Q8_0"
    assert ours == theirs


def test_tensor_type_patterns_equal_llama_quantize(reference_files: ReferenceFiles,
                                                   tmp_path: Path) -> None:
    # The first matching pattern wins; a manual type skips the mix's counters (attn_v of
    # layer 0 no longer counts for use_more_bits); rows of 352 still fall back (Q5_K → Q5_1).
    options = ["blk\\.0\\.attn_v=Q8_0", "BLK\\.1\\.FFN=q5_k", "ffn_up=Q2_K", "attn_v=Q3_K"]
    overrides = TypeOverrides.parse(options)
    ours = convert(reference_files, "tiny-llama", "Q4_K_M", tmp_path / "o.gguf", overrides)
    theirs = tensors_of(reference_files.custom(
        "tiny-llama", "Q4_K_M", "patterns",
        tensor_types=[tuple(o.lower().split("=")) for o in options]))
    types = {name: kind for name, (kind, _) in ours.items()}
    assert types["blk.0.attn_v.weight"] == "Q8_0"
    assert types["blk.1.ffn_up.weight"] == "Q5_K" and types["blk.2.ffn_up.weight"] == "Q2_K"
    assert types["blk.1.ffn_down.weight"] == "Q5_1"
    assert types["blk.3.attn_v.weight"] == "Q3_K"
    assert ours == theirs


def test_patterns_in_the_plan(reference_files: ReferenceFiles) -> None:
    header = read_gguf_header(reference_files.source("tiny-gqa"))
    plain = plan_tensor_types("Q4_K_M", gguf_tensor_specs(header), gguf_hparams(header))
    overrides = TypeOverrides.parse(["blk\\.(1[0-5])\\.ffn_down=Q6_K", "attn_q=Q8_0"])
    plan = plan_tensor_types("Q4_K_M", gguf_tensor_specs(header), gguf_hparams(header),
                             overrides=overrides)
    for tensor in plan.tensors:
        layer = tensor.name.split(".")[1] if tensor.name.startswith("blk.") else ""
        if "ffn_down" in tensor.name and int(layer) >= 10:
            assert tensor.type.name == "Q6_K"
        elif "attn_q" in tensor.name:
            assert tensor.type.name == "Q8_0"
        else:
            assert tensor.type == plain.type_of(tensor.name), tensor.name
    assert plan.data_bytes() > plain.data_bytes()
    assert overrides.describe()[0] == "tensors matching 'blk\\\\.(1[0-5])\\\\.ffn_down': Q6_K"


@pytest.mark.parametrize("option,message", [
    ("attn_v", "is not PATTERN=TYPE"), ("=Q8_0", "is not PATTERN=TYPE"),
    ("attn_v=", "is not PATTERN=TYPE"), ("attn_v=Q9_K", "valid types: F32, F16"),
    ("attn_v=IQ4_NL", "unknown or unwritable"), ("blk.(0=Q8_0", "not a valid regular"),
])
def test_bad_tensor_types(option: str, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("(", "\\(")):
        parse_tensor_type(option)


def test_cli_refuses_bad_types_with_exit_2(reference_files: ReferenceFiles,
                                           tmp_path: Path) -> None:
    source = reference_files.source("tiny-llama")
    out = tmp_path / "out.gguf"
    for args, needle in [(["--tensor-type", "attn_v=Q7_K"], "valid types: F32, F16, BF16"),
                         (["--tensor-type", "attn_v"], "PATTERN=TYPE"),
                         (["--tensor-type", "blk.[=Q8_0"], "regular expression"),
                         (["--output-tensor-type", "Q4"], "--output-tensor-type"),
                         (["--token-embedding-type", "x"], "Q4_K, Q4_1")]:
        result = subprocess.run([sys.executable, "-m", "app", "convert", str(source), "-o",
                                 str(out), "--type", "Q4_K_M", *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr, (args, result.stderr)
    assert list(tmp_path.iterdir()) == []
