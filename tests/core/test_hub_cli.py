"""`modelyard hub …` as a user runs it, against the local test Hub."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import HubServer, serving_standard_repos

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOL = "acme/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture(scope="module")
def hub(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    with serving_standard_repos(tmp_path_factory.mktemp("cli-hub"), smollm2_gguf) as server:
        yield server


def modelyard(hub: HubServer, tmp_path: Path, *args: str,
              offline: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)


def test_search_json_and_pages(hub: HubServer, tmp_path: Path) -> None:
    found = modelyard(hub, tmp_path, "hub", "search", "GGUF", "--library", "gguf", "--json")
    assert found.returncode == 0, found.stderr
    ids = [m["id"] for m in json.loads(found.stdout)["models"]]
    assert ids == [SMOL, "acme/tiny-quants-GGUF", "acme/gated-GGUF"]
    page2 = modelyard(hub, tmp_path, "hub", "search", "--sort", "likes", "--limit", "2",
                      "--page", "2")
    assert page2.returncode == 0, page2.stderr
    assert "acme/tiny-llama" in page2.stdout and "more results: --page 3" in page2.stdout


def test_files_show_quant_architecture_and_fit(hub: HubServer, tmp_path: Path) -> None:
    listed = modelyard(hub, tmp_path, "hub", "files", "acme/tiny-quants-GGUF", "--ram", "8",
                       "--cpu-only", "--ctx", "256", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    fits = {f["label"]: f for f in data["gguf_fits"]}
    assert set(fits) == {"tiny-IQ3_XS.gguf", "tiny-Q4_K_M.gguf", "tiny.BF16.gguf",
                         "Q8_0/tiny-Q8_0-*-of-00003.gguf"}
    assert all(f["architecture"] == "llama" and f["verdict"] == "ram" for f in fits.values())
    assert fits["Q8_0/tiny-Q8_0-*-of-00003.gguf"]["shard_count"] == 3
    assert data["base_models"] == ["acme/tiny-llama"] and data["recommended"]
    text = modelyard(hub, tmp_path, "hub", "files", f"https://huggingface.co/{SMOL}",
                     "--ram", "8", "--cpu-only")
    assert text.returncode == 0, text.stderr
    assert "Q4_1" in text.stdout and "llama" in text.stdout and "fits in RAM only" in text.stdout
    assert "recommended: SmolLM2-135M-Instruct.Q4_1.gguf" in text.stdout
    assert "avoids stacking two quantization errors" in text.stdout
    hf = modelyard(hub, tmp_path, "hub", "files", "acme/tiny-llama", "--ram", "8",
                   "--cpu-only", "--ctx", "256")
    assert hf.returncode == 0, hf.stderr
    assert "in transformers: fits in RAM only" in hf.stdout and "as GGUF:" in hf.stdout


def test_download_to_a_folder(hub: HubServer, tmp_path: Path, smollm2_gguf: Path) -> None:
    out = tmp_path / "models"
    done = modelyard(hub, tmp_path, "hub", "download", SMOL,
                     "SmolLM2-135M-Instruct.Q4_1.gguf", "-o", str(out))
    assert done.returncode == 0, done.stderr
    target = out / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert done.stdout.strip() == str(target)
    assert hashlib.sha256(target.read_bytes()).digest() == \
        hashlib.sha256(smollm2_gguf.read_bytes()).digest()


def test_download_a_whole_repo_and_split_shards(hub: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "all"
    done = modelyard(hub, tmp_path, "hub", "download", "acme/tiny-quants-GGUF", "-o", str(out))
    assert done.returncode == 0, done.stderr
    repo = hub.repos["acme/tiny-quants-GGUF"]
    assert sorted(done.stdout.split()) == sorted(str(out / name) for name in repo.files)
    for name in repo.files:
        assert (out / name).read_bytes() == repo.data(name)
    shards = [f"Q8_0/tiny-Q8_0-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    two = modelyard(hub, tmp_path, "hub", "download", "acme/tiny-quants-GGUF", *shards,
                    "-o", str(tmp_path / "shards"), "--json")
    assert two.returncode == 0, two.stderr
    assert [d["filename"] for d in json.loads(two.stdout)] == shards


@pytest.mark.parametrize(("args", "words"), [
    (("files", "acme/private-model"), "401"),
    (("download", "acme/gated-GGUF", "tiny-Q4_K_M.gguf"), "accept the licence"),
    (("files", "acme/nothing-here"), "no model repo acme/nothing-here"),
    (("download", SMOL, "missing.gguf"), "has no file 'missing.gguf'"),
    (("search", "x", "--limit", "0"), "page size"),
    (("files", "not a repo"), "not a Hub model"),
])
def test_refusals_exit_2_with_one_line(hub: HubServer, tmp_path: Path, args: tuple[str, ...],
                                       words: str) -> None:
    result = modelyard(hub, tmp_path, "hub", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_offline_mode_says_so(hub: HubServer, tmp_path: Path) -> None:
    result = modelyard(hub, tmp_path, "hub", "search", "smol", offline=True)
    assert result.returncode == 1 and "offline mode is on" in result.stderr
