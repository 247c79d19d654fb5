"""`modelyard merge` through a real subprocess, and the YAML checks behind its exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import factories
from app.core.errors import OptionError
from app.core.generate.backends.llama_cpp import open_llama
from app.core.merge import parse_config


def modelyard(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def two_llamas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge-cli")
    return (factories.make_hf_model(root / "a", "llama", seed=1),
            factories.make_hf_model(root / "b", "llama", seed=2, with_tokenizer=False))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    return path


def test_cli_merges_writes_report_config_and_gguf(two_llamas: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    import gguf

    a, b = two_llamas
    text = (f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
            "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 1]\n"
            "    - value: 0.5\ndtype: float16\n")
    config = write(tmp_path, text)
    target = tmp_path / "merged"
    done = modelyard("merge", str(config), "-o", str(target), "--device", "cpu", "--type",
                     "F16", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"]["refused"] == 0 and result["gguf"]
    assert (target / "mergekit_config.yml").read_text() == text
    report = json.loads((target / "merge_report.json").read_text())
    q_proj = next(t for t in report["tensors"] if t["name"] ==
                  "model.layers.1.self_attn.q_proj.weight")
    assert q_proj["action"] == "merged" and q_proj["parameters"]["t"] == 1.0
    assert q_proj["models"] == [str(a), str(b)]
    reader = gguf.GGUFReader(result["gguf"])
    assert len(reader.tensors) == len(report["tensors"])
    # llama.cpp runs the merged GGUF and gives transformers' greedy tokens on the merged folder.
    pytest.importorskip("llama_cpp")
    import transformers

    llm = open_llama(Path(result["gguf"]), n_ctx=256, n_threads=2)
    prompt = llm.tokenize(b"The capital of France is", add_bos=False)
    tokens: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        tokens.append(token)
        if len(tokens) == 6:
            break
    model = transformers.AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)
    assert tokens == expected[0, len(prompt):].tolist()
    assert not list(tmp_path.glob("*.part"))


def test_cli_dry_run_prints_the_plan_and_writes_nothing(two_llamas: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    a, b = two_llamas
    config = write(tmp_path, f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters:"
                             f" {{weight: 1}}\n  - model: {b}\n    parameters: {{weight: 2}}\n")
    done = modelyard("merge", str(config), "-o", str(tmp_path / "out"), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["counts"]["merged"] == len(plan["tensors"]) > 0
    weights = {tuple(t["parameters"]["weights"]) for t in plan["tensors"]}
    assert weights == {(1.0, 2.0)}
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("body", "expected"), [
    ("merge_method: ties\nmodels:\n  - model: {a}\n    parameters: {{weight: 1, density: 1.5}}"
     "\nbase_model: {a}\n", "line 4: density 1.5 is outside (0, 1]"),
    ("merge_method: ties\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
     "    parameters:\n      weight: 1\n      density: [0.5, 0]\n",
     "line 8: density 0.0 is outside (0, 1]"),
    ("merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 1}}\n"
     "  - model: {b}\n    parameters: {{weight: -1}}\n", "the weights sum to 0"),
    ("merge_method: linear\nmodels:\n  - model: {a}\n  - model: /no/such/model\n",
     "line 4: model '/no/such/model' does not exist"),
    ("merge_method: linear\nmodels:\n  - model: {a}\n   - model: {b}\n", "line 4: not valid"),
    ("merge_method: frobnicate\nmodels:\n  - model: {a}\n",
     "line 1: merge_method 'frobnicate' is not supported"),
    ("merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n",
     "slerp needs `t`"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(two_llamas: tuple[Path, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  body: str, expected: str) -> None:
    from app.cli import main

    a, b = two_llamas
    config = write(tmp_path, body.format(a=a, b=b))
    target = tmp_path / "out"
    assert main(["merge", str(config), "-o", str(target), "--device", "cpu"]) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr
    assert stderr.count("\n") == 1
    assert not target.exists() and not Path(f"{target}.part").exists()


def test_cli_mismatched_architectures_exit_2(two_llamas: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    qwen = factories.make_hf_model(tmp_path / "qwen", "qwen2", with_tokenizer=False)
    config = write(tmp_path, f"merge_method: linear\nmodels:\n  - model: {two_llamas[0]}\n"
                             f"    parameters: {{weight: 1}}\n  - model: {qwen}\n"
                             f"    parameters: {{weight: 1}}\n")
    done = modelyard("merge", str(config), "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "different architectures" in done.stderr and "qwen2" in done.stderr


def test_config_checks_name_the_line() -> None:
    with pytest.raises(OptionError, match="line 2: unknown key 'modls'"):
        parse_config("merge_method: linear\nmodls: []\n")
    with pytest.raises(OptionError, match="give either `models` or `slices`"):
        parse_config("merge_method: linear\n")
    with pytest.raises(OptionError, match="line 2: layer_range"):
        parse_config("merge_method: passthrough\nslices: [{sources: [{model: ., "
                     "layer_range: [4, 2]}]}]\n")
    with pytest.raises(OptionError, match="ties needs a base_model"):
        parse_config("merge_method: ties\nmodels:\n  - model: .\n")


def test_cli_a_bad_shard_size_names_its_flag(two_llamas: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    a, b = two_llamas
    config = write(tmp_path, f"merge_method: linear\nmodels:\n  - model: {a}\n  - model: {b}\n")
    target = tmp_path / "out"
    assert main(["merge", str(config), "-o", str(target), "--shard-size", "lots"]) == 2
    stderr = capsys.readouterr().err
    assert "'lots' is not a size" in stderr and "--shard-size" in stderr
    assert not target.exists()
