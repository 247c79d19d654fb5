"""An architecture the estimator does not know gives an estimate flagged approximate, for a GGUF
and for a Hugging Face folder alike: in `fit --json` and in the window (tests/gui)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factories import make_gguf, make_hf_model

UNKNOWN = "is unknown to the estimator"


def with_model_type(source: Path, target: Path, model_type: str) -> Path:
    """A copy of an HF folder whose config.json names another architecture."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = model_type
    config["architectures"] = ["SomethingNewForCausalLM"]
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("approximate")
    hf = make_hf_model(root / "hf-llama", "llama")
    return {"gguf-known": make_gguf(root / "llama.gguf"),
            "gguf-unknown": make_gguf(root / "odd.gguf", arch="somethingnew"),
            "hf-known": hf,
            "hf-unknown": with_model_type(hf, root / "hf-odd", "somethingnew")}


def fit_json(path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "app", "fit", str(path), "--json",
                             "--ctx", "512"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_an_unknown_architecture_is_flagged_in_the_json(kind: str,
                                                        sources: dict[str, Path]) -> None:
    unknown = fit_json(sources[f"{kind}-unknown"])
    assert unknown["weights_bytes"] > 0 and unknown["kv_cache_bytes"] > 0
    assert any("'somethingnew' " + UNKNOWN in note for note in unknown["approximate"]), unknown
    known = fit_json(sources[f"{kind}-known"])
    assert not any(UNKNOWN in note for note in known["approximate"]), known
