"""A Hub repo's safetensors model described remotely, as `inspect` describes the folder on
disk: config.json (one small request) and the tensors from the safetensors headers that the
listing already read. The fit of loading it in transformers, and of each GGUF it could be
converted to, follows from it before anything is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.errors import FormatError
from app.core.formats.hf_config import CONTEXT_KEYS, LAYER_KEYS, config_int, model_type
from app.core.formats.hf_model import quantization_label
from app.core.formats.model_info import ModelInfo, Problem
from app.core.hub.client import ensure_online, hub_endpoint
from app.core.hub.errors import hub_errors
from app.core.hub.remote_header import fetch_range
from app.core.hub.repo_files import RepoListing

MAX_CONFIG_BYTES = 1 << 20  # config.json files are a few kilobytes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def fetch_config(repo_id: str, revision: str, filename: str = "config.json") -> dict[str, object]:
    from huggingface_hub import hf_hub_url

    ensure_online()
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=hub_endpoint())
    with hub_errors(repo_id, filename, revision, hub_endpoint()):
        data, size = fetch_range(url, 0, MAX_CONFIG_BYTES - 1)
    where = Path(repo_id) / filename
    if size is not None and size > MAX_CONFIG_BYTES:
        raise FormatError(f"{size} bytes is too large for a config file", path=where)
    try:
        config = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not valid JSON ({exc})", path=where) from None
    if not isinstance(config, dict):
        raise FormatError("not a JSON object", path=where)
    return config


def describe_remote_hf(listing: RepoListing) -> ModelInfo | None:
    """The repo's safetensors model, or None when it has no safetensors weights."""
    summary = listing.safetensors
    if summary is None:
        return None
    names = {f.name for f in listing.files}
    problems: list[Problem] = []
    config: dict[str, object] = {}
    if "config.json" in names:
        config = fetch_config(listing.repo_id, listing.ref)
    else:
        problems.append(Problem("no config.json: transformers cannot load it", fatal=True))
    tensors = summary.tensors
    return ModelInfo(
        name=listing.repo_id.split("/", 1)[1], path=Path(listing.repo_id), format="hf",
        files=tuple(Path(listing.repo_id) / name for name in summary.files),
        architecture=model_type(config), parameters=sum(t.n_params for t in tensors),
        file_size=summary.total_size, tensors=tensors,
        quantization=quantization_label(config, tensors),
        context_length=config_int(config, *CONTEXT_KEYS),
        n_layers=config_int(config, *LAYER_KEYS),
        has_tokenizer=any(name in names for name in TOKENIZER_FILES),
        problems=tuple(problems), metadata=config, source="hub", repo_id=listing.repo_id)
