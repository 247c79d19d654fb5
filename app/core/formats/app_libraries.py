"""Other apps' model libraries, read in place and never written: Ollama and LM Studio.

Ollama keeps `manifests/<registry>/<namespace>/<model>/<tag>` (JSON, OCI-style) and
content-addressed `blobs/sha256-<digest>`; the layer with media type
`application/vnd.ollama.image.model` is the GGUF. Its models are listed under Ollama's own
names (`smollm2:135m`; the default registry and the `library` namespace are left out).
LM Studio keeps plain files under `<publisher>/<repo>/…` in `~/.lmstudio/models` (and the older
`~/.cache/lm-studio/models`). Its newer catalogue names models in `~/.lmstudio/hub/models/…/
model.yaml` (LM Studio's model.yaml format: `model: qwen/qwen3-8b`, and under `base` the
concrete downloads, each `key` with `sources` such as `{type: huggingface, user, repo}`); the
weights stay in the models folder under `<user>/<repo>`, and are listed under the hub's name as
LM Studio lists them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from app.core.formats.gguf_model import describe_gguf
from app.core.formats.model_info import ModelInfo
from app.core.jobs import Reporter, check_cancel

AppName = Literal["ollama", "lmstudio"]
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"
DIGEST = re.compile(r"^sha256[:-](?P<hex>[0-9a-f]{64})$")
MAX_MANIFEST_BYTES = 1 << 20  # real manifests are a few hundred bytes


@dataclass(frozen=True)
class AppLibrary:
    app: AppName
    root: Path

    @property
    def label(self) -> str:
        return {"ollama": "Ollama", "lmstudio": "LM Studio"}[self.app]


def ollama_root() -> Path:
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def lmstudio_roots() -> list[Path]:
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def lmstudio_hub_root() -> Path:
    return Path.home() / ".lmstudio" / "hub" / "models"


MAX_MODEL_YAML_BYTES = 1 << 20  # real ones are a few kilobytes
HUB_DEPTH = 4  # hub/models/<publisher>/<model>/model.yaml, with room for one more level


def _hub_definition(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """A model.yaml's name and the Hugging Face (user, repo) of each concrete download it
    names; ValueError with the reason when it cannot be read."""
    import yaml

    if path.stat().st_size > MAX_MODEL_YAML_BYTES:
        raise ValueError("model.yaml is implausibly large")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"model.yaml is not YAML ({str(exc).splitlines()[0]})") from None
    name = data.get("model") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise ValueError("model.yaml names no model")
    repos = []
    base = data.get("base")
    # A string base names another hub model, which has a model.yaml of its own.
    for entry in base if isinstance(base, list) else []:
        sources = entry.get("sources") if isinstance(entry, dict) else None
        for source in sources if isinstance(sources, list) else []:
            if isinstance(source, dict) and source.get("type") == "huggingface":
                user, repo = source.get("user"), source.get("repo")
                if isinstance(user, str) and isinstance(repo, str) and "/" not in user + repo \
                        and ".." not in (user, repo):
                    repos.append((user, repo))
    return name.strip(), repos


def lmstudio_hub_names(hub: Path, models_root: Path) -> tuple[dict[Path, str],
                                                             list[tuple[Path, str]]]:
    """The hub's name of each download folder under `models_root` that a model.yaml in `hub`
    names; (names, problems)."""
    names: dict[Path, str] = {}
    problems: list[tuple[Path, str]] = []
    if not hub.is_dir():
        return names, problems
    found = [p for depth in range(1, HUB_DEPTH + 1)
             for p in hub.glob("/".join(["*"] * depth) + "/model.yaml")]
    for path in sorted(found):
        try:
            name, repos = _hub_definition(path)
        except (OSError, ValueError) as exc:
            problems.append((path, f"LM Studio hub model: {exc}"))
            continue
        for user, repo in repos:
            folder = models_root / user / repo
            if folder.is_dir():
                names.setdefault(folder, name)
    return names, problems


def default_app_libraries() -> list[AppLibrary]:
    """The libraries present on this machine."""
    found = [AppLibrary("ollama", ollama_root())] if (ollama_root() / "manifests").is_dir() \
        else []
    found += [AppLibrary("lmstudio", root) for root in lmstudio_roots() if root.is_dir()]
    return found


def ollama_name(registry: str, namespace: str, model: str, tag: str) -> str:
    if registry == OLLAMA_DEFAULT_REGISTRY:
        prefix = "" if namespace == "library" else f"{namespace}/"
    else:
        prefix = f"{registry}/{namespace}/"
    return f"{prefix}{model}:{tag}"


def _model_blob(manifest: Path, blobs: Path) -> Path:
    """The GGUF blob a manifest names; ValueError with the reason when there is none."""
    if manifest.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValueError("manifest is implausibly large")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"manifest is not JSON ({exc})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ValueError("manifest has no layers")
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            match = DIGEST.match(str(layer.get("digest", "")))
            if match is None:
                raise ValueError(f"model layer digest {layer.get('digest')!r} is not a sha256")
            return blobs / f"sha256-{match['hex']}"
    raise ValueError("manifest has no model layer")


def scan_ollama(root: Path, reporter: Reporter) -> tuple[list[ModelInfo], list[tuple[Path, str]]]:
    """Every model in an Ollama store, under its Ollama name; (models, problems)."""
    models: list[ModelInfo] = []
    problems: list[tuple[Path, str]] = []
    manifests, blobs = root / "manifests", root / "blobs"
    if not manifests.is_dir():
        return models, problems
    for manifest in sorted(manifests.glob("*/*/*/*")):
        check_cancel(reporter)
        if not manifest.is_file():
            continue
        registry, namespace, model, tag = manifest.relative_to(manifests).parts
        name = ollama_name(registry, namespace, model, tag)
        try:
            blob = _model_blob(manifest, blobs)
        except (OSError, ValueError) as exc:
            problems.append((manifest, f"Ollama model {name}: {exc}"))
            continue
        if not blob.is_file():
            problems.append((blob, f"Ollama model {name}: its model blob is missing"))
            continue
        models.append(replace(describe_gguf([blob], name=name), source="ollama"))
    return models, problems


def find_ollama_model(name: str) -> ModelInfo | None:
    """The model an Ollama name (`smollm2:135m`, `someone/tiny`, `hf.co/acme/X:Q8_0`; tag
    `latest` when left out) names in this machine's Ollama store, or None."""
    if name.count(":") > 1 or not re.fullmatch(r"[\w.:/-]+", name) or ".." in name:
        return None
    base, _, tag = name.partition(":")
    parts = base.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_DEFAULT_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_DEFAULT_REGISTRY, *parts]
    if len(parts) != 3 or not all(parts):
        return None
    root = ollama_root()
    manifest = root.joinpath("manifests", *parts, tag or "latest")
    if not manifest.is_file():
        return None
    try:
        blob = _model_blob(manifest, root / "blobs")
    except (OSError, ValueError):
        return None
    if not blob.is_file():
        return None
    return replace(describe_gguf([blob], name=ollama_name(*parts, tag or "latest")),
                   source="ollama")


def scan_lmstudio(root: Path, reporter: Reporter) -> tuple[list[ModelInfo],
                                                          list[tuple[Path, str]]]:
    """Every model in an LM Studio folder, named `publisher/repo` (plus the file when a repo
    holds several)."""
    from app.core.formats.scan import scan_paths

    found = scan_paths([root], reporter=reporter)
    hub_names, problems = ({}, []) if root != lmstudio_roots()[0] else \
        lmstudio_hub_names(lmstudio_hub_root(), root)
    models = []
    for model in found.models:
        try:
            parts = model.path.relative_to(root).parts
        except ValueError:
            parts = ()
        repo = "/".join(parts[:2]) if len(parts) >= 2 else model.name
        if len(parts) >= 3:
            repo = hub_names.get(root / parts[0] / parts[1], repo)
        siblings = [m for m in found.models if m.path.parent == model.path.parent]
        name = repo if len(siblings) == 1 or len(parts) < 3 else f"{repo} · {model.name}"
        models.append(replace(model, name=name, source="lmstudio"))
    return models, [(p.path, p.text) for p in found.problems] + problems


def scan_app_library(library: AppLibrary, reporter: Reporter) -> tuple[
        list[ModelInfo], list[tuple[Path, str]]]:
    if library.app == "ollama":
        return scan_ollama(library.root, reporter)
    return scan_lmstudio(library.root, reporter)
