"""Ollama's store and LM Studio's folders, built by the test: listed under the apps' names,
usable by inspect, fit and convert, and never written to."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.formats.app_libraries import default_app_libraries, ollama_name
from app.core.formats.scan import scan_paths
from factories import make_gguf, tree_digest


def _blob(store: Path, source: Path) -> str:
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    return digest


def _manifest(store: Path, registry: str, namespace: str, model: str, tag: str,
              layers: list[dict[str, object]]) -> Path:
    path = store / "manifests" / registry / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": layers}))
    return path


def _model_layer(digest: str, size: int) -> dict[str, object]:
    return {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
            "size": size}


@pytest.fixture()
def libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fake Ollama store (OLLAMA_MODELS) and LM Studio folders under a fake HOME."""
    (tmp_path / "src").mkdir()
    source = make_gguf(tmp_path / "src" / "tiny.gguf")
    store = tmp_path / "ollama-models"
    digest = _blob(store, source)
    size = source.stat().st_size
    template = {"mediaType": "application/vnd.ollama.image.template", "digest":
                "sha256:" + "1" * 64, "size": 10}
    _manifest(store, "registry.ollama.ai", "library", "smollm2", "135m",
              [_model_layer(digest, size), template])
    _manifest(store, "registry.ollama.ai", "someone", "tiny", "latest",
              [_model_layer(digest, size)])
    _manifest(store, "hf.co", "acme", "Tiny-GGUF", "Q8_0", [_model_layer(digest, size)])
    _manifest(store, "registry.ollama.ai", "library", "gone", "7b",
              [_model_layer("2" * 64, 5)])
    (store / "manifests" / "registry.ollama.ai" / "library" / "broken").mkdir(parents=True)
    (store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "1b").write_text("{")

    home = tmp_path / "home"
    lms = home / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF"
    lms.mkdir(parents=True)
    make_gguf(lms / "Tiny-Q8_0.gguf")
    old = home / ".cache" / "lm-studio" / "models" / "acme" / "Two-GGUF"
    old.mkdir(parents=True)
    make_gguf(old / "two-F32.gguf")
    make_gguf(old / "two-F16.gguf", f16=True)

    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    monkeypatch.setenv("HOME", str(home))
    return {"ollama": store, "home": home, "blob": store / "blobs" / f"sha256-{digest}"}


def test_names_as_the_apps_show_them() -> None:
    assert ollama_name("registry.ollama.ai", "library", "smollm2", "135m") == "smollm2:135m"
    assert ollama_name("registry.ollama.ai", "someone", "tiny", "latest") == "someone/tiny:latest"
    assert ollama_name("hf.co", "acme", "Tiny-GGUF", "Q8_0") == "hf.co/acme/Tiny-GGUF:Q8_0"


def test_ollama_and_lm_studio_are_listed_in_place(libraries: dict[str, Path]) -> None:
    assert [lib.app for lib in default_app_libraries()] == ["ollama", "lmstudio", "lmstudio"]
    result = scan_paths([], include_app_libraries=True)
    by_name = {m.name: m for m in result.models}
    # Three Ollama names share one blob: each is listed, as `ollama list` lists them.
    ollama = [m for m in result.models if m.source == "ollama"]
    assert sorted(m.name for m in ollama) == ["hf.co/acme/Tiny-GGUF:Q8_0", "smollm2:135m",
                                              "someone/tiny:latest"]
    assert all(m.path == libraries["blob"] and m.architecture == "llama" for m in ollama)
    lms = sorted(m.name for m in result.models if m.source == "lmstudio")
    assert lms == ["acme/Two-GGUF · two-F16", "acme/Two-GGUF · two-F32",
                   "lmstudio-community/Tiny-GGUF"]
    assert by_name["lmstudio-community/Tiny-GGUF"].quantization == "F32"
    problems = " ".join(p.text for p in result.problems)
    assert "gone:7b: its model blob is missing" in problems
    assert "broken:1b: manifest is not JSON" in problems


def test_each_ollama_model_is_listed_under_its_own_name(libraries: dict[str, Path],
                                                        tmp_path: Path) -> None:
    store = libraries["ollama"]
    other = _blob(store, make_gguf(tmp_path / "src" / "other.gguf", n_layers=3))
    _manifest(store, "registry.ollama.ai", "library", "other", "3b",
              [_model_layer(other, 1)])
    names = {m.name for m in scan_paths([], include_app_libraries=True).models
             if m.source == "ollama"}
    assert "other:3b" in names and len(names) == 4


REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # This checkout's `app`, whatever the working folder and the venv's installed copy.
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          timeout=180, env=env, cwd=cwd)


def test_cli_scan_fit_inspect_convert_on_app_libraries(libraries: dict[str, Path],
                                                       tmp_path: Path) -> None:
    before = tree_digest(libraries["ollama"], libraries["home"])
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "no-cache")}
    scanned = run_cli("scan", "--json", env=env, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    sources = {m["name"]: m["source"] for m in json.loads(scanned.stdout)["models"]}
    assert sources["lmstudio-community/Tiny-GGUF"] == "lmstudio"
    assert "ollama" in sources.values()
    table = run_cli("scan", str(tmp_path / "src"), env=env, cwd=tmp_path).stdout.splitlines()
    assert table[0].split()[-1] == "Source"
    source_of = {line.split()[0]: line.split()[-1] for line in table[2:] if line.strip()}
    assert source_of["tiny"] == "folder" and source_of["smollm2:135m"] == "Ollama"
    assert any(line.startswith("lmstudio-community/Tiny-GGUF") and
               line.rstrip().endswith("LM Studio") for line in table)
    without = run_cli("scan", "--json", "--no-app-libraries", env=env, cwd=tmp_path)
    assert json.loads(without.stdout)["models"] == []

    blob = str(libraries["blob"])
    fit = run_cli("fit", "smollm2:135m", "--json", "--ram", "8", "--cpu-only", env=env,
                  cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    data = json.loads(fit.stdout)
    assert data["model"]["name"] == "smollm2:135m" and data["verdict"] == "ram"
    out = tmp_path / "converted.gguf"
    converted = run_cli("convert", blob, "-o", str(out), "--type", "Q8_0", env=env,
                        cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert out.read_bytes()[:4] == b"GGUF"
    assert tree_digest(libraries["ollama"], libraries["home"]) == before


def test_a_blob_without_suffix_and_an_ollama_name_are_models(libraries: dict[str, Path],
                                                            tmp_path: Path) -> None:
    from app.core.convert import ConvertRequest
    from app.core.errors import BadInputError
    from app.core.formats.scan import inspect_path
    from app.core.jobs import RecordingReporter

    before = tree_digest(libraries["ollama"])
    by_path = inspect_path(libraries["blob"])
    by_name = inspect_path("someone/tiny:latest")
    assert by_path.architecture == by_name.architecture == "llama"
    assert by_name.name == "someone/tiny:latest" and by_name.path == libraries["blob"]
    assert by_name.source == "ollama" and by_name.tensors == by_path.tensors
    out = tmp_path / "from-name.gguf"
    ConvertRequest(Path("someone/tiny:latest"), out, "F16", device="cpu").run(RecordingReporter())
    assert inspect_path(out).quantization == "F16"
    with pytest.raises(BadInputError, match="no such file"):
        inspect_path("nosuch:7b")
    assert tree_digest(libraries["ollama"]) == before


def _hub_model(home: Path, publisher: str, model: str, text: str) -> Path:
    path = home / ".lmstudio" / "hub" / "models" / publisher / model / "model.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lm_studio_hub_names_its_downloads(libraries: dict[str, Path]) -> None:
    home = libraries["home"]
    # LM Studio's model.yaml: the model's name, and its concrete downloads under `base`.
    _hub_model(home, "acme", "tiny", """\
model: acme/tiny
base:
  - key: lmstudio-community/tiny-gguf
    sources:
      - type: huggingface
        user: lmstudio-community
        repo: Tiny-GGUF
  - key: lmstudio-community/tiny-mlx
    sources:
      - type: huggingface
        user: lmstudio-community
        repo: Tiny-MLX-4bit
metadataOverrides:
  domain: llm
""")
    _hub_model(home, "evil", "escape", "model: evil/escape\nbase:\n  - key: x\n    sources:\n"
                                      "      - {type: huggingface, user: '..', repo: '..'}\n")
    _hub_model(home, "other", "alias", "model: other/alias\nbase: acme/tiny\n")
    broken = _hub_model(home, "broken", "one", "model: [unclosed\n")
    before = tree_digest(home)
    result = scan_paths([], include_app_libraries=True)
    lms = sorted(m.name for m in result.models if m.source == "lmstudio")
    assert lms == ["acme/Two-GGUF · two-F16", "acme/Two-GGUF · two-F32", "acme/tiny"]
    assert any(p.path == broken and "not YAML" in p.text for p in result.problems)
    assert tree_digest(home) == before  # read in place, nothing written
