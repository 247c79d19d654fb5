"""A Hub repo's files: every file with its size, GGUFs grouped by quant (split shards as one
entry), the safetensors weights' total size and parameter count, and the card's base model."""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.formats.model_info import TensorInfo
from app.core.hub.client import hub_api, hub_endpoint
from app.core.hub.errors import hub_errors
from app.core.hub.references import check_repo_id
from app.core.jobs import NullReporter, Reporter, check_cancel

SPLIT_SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
# Quant tags as publishers write them in file names: Q4_K_M, IQ3_XS, Q4_0_4_4, BF16, UD-Q4_K_XL.
QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(?P<tag>(?:UD-)?(?:IQ\d_(?:XXS|XS|S|M|NL)|Q\d_K(?:_(?:XL|S|M|L))?"
    r"|Q\d_\d(?:_\d_\d)?|TQ\d_\d|MXFP4(?:_MOE)?|BF16|FP16|F16|FP32|F32))(?![A-Za-z0-9])",
    re.IGNORECASE)


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the repo
    size: int | None
    sha256: str | None = None  # LFS files: the content's sha256

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class GGUFEntry:
    """One GGUF model in the repo: a single file, or all shards of a split one."""

    label: str  # the file name, or "base-000NN-of-000NN" for shards
    quant: str | None  # from the name (Q4_K_M); None when the name carries none
    files: tuple[str, ...]  # shard order
    size: int
    shard_count: int | None = None
    complete: bool = True  # every shard of a split model is present

    @property
    def first_file(self) -> str:
        return self.files[0]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "quant": self.quant, "files": list(self.files),
                "size": self.size, "shard_count": self.shard_count, "complete": self.complete}


@dataclass(frozen=True)
class SafetensorsSummary:
    files: tuple[str, ...]
    total_size: int
    parameters: int | None  # None when the headers could not be read
    dtypes: dict[str, int]  # parameters per dtype
    # Every tensor as the remote headers describe it (for the fit estimate).
    tensors: tuple[TensorInfo, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"files": list(self.files), "total_size": self.total_size,
                "parameters": self.parameters, "dtypes": self.dtypes}


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    revision: str  # the commit the listing is of
    gated: bool
    files: tuple[RemoteFile, ...]
    ggufs: tuple[GGUFEntry, ...]
    safetensors: SafetensorsSummary | None
    base_models: tuple[str, ...] = ()  # from the card; offered when the repo is quantized
    quantized: bool = False
    # The branch, tag or commit the user asked for: what file requests name (a Hub mirror
    # may resolve branch names only).
    ref: str = "main"

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def file(self, name: str) -> RemoteFile | None:
        return next((f for f in self.files if f.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "ref": self.ref,
                "gated": self.gated,
                "quantized": self.quantized, "base_models": list(self.base_models),
                "total_size": self.total_size, "files": [f.to_json() for f in self.files],
                "ggufs": [g.to_json() for g in self.ggufs],
                "safetensors": self.safetensors.to_json() if self.safetensors else None}


def quant_from_name(name: str) -> str | None:
    """The quant tag a GGUF's file name carries (the last one), upper case: Q4_K_M, IQ3_XS."""
    stem = posixpath.basename(name)
    shard = SPLIT_SHARD.match(stem)
    stem = shard["base"] if shard else stem.removesuffix(".gguf")
    tags = QUANT_IN_NAME.findall(stem)
    if not tags:
        return None
    tag = tags[-1].upper()
    return {"FP16": "F16", "FP32": "F32"}.get(tag, tag)


def group_gguf(files: Sequence[RemoteFile]) -> list[GGUFEntry]:
    """GGUF entries of a repo: split shards `-0000N-of-0000M` of one model become one entry."""
    singles: list[GGUFEntry] = []
    shards: dict[tuple[str, str, int], list[tuple[int, RemoteFile]]] = {}
    for file in files:
        if not file.name.lower().endswith(".gguf"):
            continue
        folder, base = posixpath.split(file.name)
        match = SPLIT_SHARD.match(base)
        if match is None:
            singles.append(GGUFEntry(file.name, quant_from_name(file.name), (file.name,),
                                     file.size or 0))
        else:
            key = (folder, match["base"], int(match["count"]))
            shards.setdefault(key, []).append((int(match["index"]), file))
    for (folder, base, count), members in shards.items():
        members.sort(key=lambda pair: pair[0])
        names = tuple(f.name for _, f in members)
        present = {index for index, _ in members}
        label = posixpath.join(folder, f"{base}-*-of-{count:05d}.gguf")
        singles.append(GGUFEntry(label, quant_from_name(names[0]), names,
                                 sum(f.size or 0 for _, f in members), count,
                                 present == set(range(1, count + 1))))
    return sorted(singles, key=lambda entry: entry.label.lower())


def _base_models(card_data: Any) -> tuple[str, ...]:
    raw = getattr(card_data, "base_model", None) if card_data is not None else None
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list):
        return tuple(str(item) for item in raw if isinstance(item, str))
    return ()


def _safetensors_summary(repo_id: str, revision: str, files: Sequence[RemoteFile],
                         reporter: Reporter) -> SafetensorsSummary | None:
    weights = [f for f in files if f.name.endswith(".safetensors")]
    if not weights:
        return None
    api = hub_api()
    dtypes: dict[str, int] = {}
    tensors: list[TensorInfo] = []
    # Each file's header is read with a ranged request (huggingface_hub's safetensors
    # metadata API); shards are read one by one so a cancel is honoured between them.
    for index, file in enumerate(weights):
        check_cancel(reporter)
        reporter.progress(index, len(weights), f"reading {file.name}'s header")
        with hub_errors(repo_id, file.name, revision, hub_endpoint()):
            meta = api.parse_safetensors_file_metadata(repo_id, file.name, revision=revision)
        for dtype, count in meta.parameter_count.items():
            dtypes[dtype] = dtypes.get(dtype, 0) + int(count)
        where = Path(repo_id) / file.name
        for name, entry in meta.tensors.items():
            begin, end = entry.data_offsets
            tensors.append(TensorInfo(name, entry.dtype, tuple(entry.shape), end - begin,
                                      math.prod(entry.shape), where))
    return SafetensorsSummary(tuple(f.name for f in weights), sum(f.size or 0 for f in weights),
                              sum(dtypes.values()), dtypes, tuple(tensors))


def list_repo(repo_id: str, revision: str | None = None,
              reporter: Reporter | None = None) -> RepoListing:
    """Every file of `repo_id` with its size, grouped as above (one model-info call plus one
    header read per safetensors file)."""
    reporter = reporter or NullReporter()
    check_repo_id(repo_id)
    api = hub_api()
    with hub_errors(repo_id, revision=revision, endpoint=hub_endpoint()):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    files = tuple(RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None)
                  for s in info.siblings or ())
    ref = revision or "main"
    ggufs = tuple(group_gguf(files))
    tags = set(info.tags or ())
    quantized = bool(ggufs) or any(t.startswith("base_model:quantized:") for t in tags)
    return RepoListing(repo_id, info.sha or ref, bool(info.gated), files, ggufs,
                       _safetensors_summary(repo_id, ref, files, reporter),
                       _base_models(info.card_data), quantized, ref)
