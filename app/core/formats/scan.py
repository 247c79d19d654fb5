"""Find models under folders and in the Hugging Face cache, headers only.

A scan never stops at one bad model or folder: an unreadable model carries its problems, and a
folder that cannot be listed or a looping link becomes a `ScanProblem`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.core.errors import BadInputError
from app.core.formats.gguf_header import has_gguf_magic
from app.core.formats.gguf_model import describe_gguf, group_gguf_files, split_shard_info
from app.core.formats.hf_model import describe_hf_folder, looks_like_hf_folder
from app.core.formats.model_info import ModelInfo, Problem, broken_model
from app.core.jobs import NullReporter, ProgressUnit, Reporter, check_cancel, remove_output

MAX_DEPTH = 12


@dataclass(frozen=True)
class ScanProblem:
    path: Path
    text: str

    def __str__(self) -> str:
        return f"{self.path}: {self.text}"


@dataclass(frozen=True)
class IncompleteOutput:
    """A `NAME.part` a job was writing when its process was killed (or the machine stopped).

    It is never a usable model; deleting it is safe, and running the job again replaces it.
    """

    path: Path
    size_bytes: int
    modified: float = 0.0  # when it was last written to (seconds since the epoch; 0: unknown)

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "bytes": self.size_bytes, "modified": self.modified}


INCOMPLETE_TEXT = ("incomplete output: a job stopped while writing it; it is safe to delete, "
                   "and running the job again replaces it")


def is_incomplete_output(path: Path, is_dir: bool) -> bool:
    """What `atomic_output` writes before the rename: `X.gguf.part` and the like, or a
    folder `X.part` (a safetensors output being written)."""
    if path.suffix != ".part":
        return False
    return is_dir or Path(path.stem).suffix in (".gguf", ".safetensors", ".dat")


def incomplete_output_at(path: Path) -> IncompleteOutput:
    """The leftover at `path` with its size and the time it was last written to (for a
    folder, its newest file's)."""
    try:
        if not path.is_dir():
            stat = path.stat()
            return IncompleteOutput(path, stat.st_size, stat.st_mtime)
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
        newest = max((s.st_mtime for s in stats), default=path.stat().st_mtime)
        return IncompleteOutput(path, sum(s.st_size for s in stats), newest)
    except OSError:
        return IncompleteOutput(path, 0)


def delete_incomplete_output(path: Path) -> int:
    """Remove the leftover `.part` at `path` and nothing else; the bytes it freed.

    Refuses a path that is not one (a finished model is never deleted through here), so a
    stale list cannot turn a click into the loss of a model."""
    path = Path(path)
    if not os.path.lexists(path):
        raise BadInputError("is no longer there", path=path)
    if not is_incomplete_output(path, path.is_dir()):
        raise BadInputError("is not an incomplete output (NAME.gguf.part or a NAME.part "
                            "folder); nothing was deleted", path=path)
    freed = incomplete_output_at(path).size_bytes if not path.is_symlink() else 0
    remove_output(path)
    if os.path.lexists(path):
        raise BadInputError("could not be deleted completely", path=path,
                            hint="check the folder's permissions")
    return freed


@dataclass(frozen=True)
class ScanResult:
    models: tuple[ModelInfo, ...]
    problems: tuple[ScanProblem, ...] = ()
    incomplete: tuple[IncompleteOutput, ...] = ()


def _describe_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)"
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)


@dataclass
class _Walker:
    reporter: Reporter
    models: list[ModelInfo] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    seen_models: set[Path] = field(default_factory=set)
    incomplete: list[IncompleteOutput] = field(default_factory=list)
    folders_done: int = 0

    def add(self, model: ModelInfo) -> None:
        key = model.path.resolve()
        if key not in self.seen_models:
            self.seen_models.add(key)
            self.models.append(model)

    def list_folder(self, folder: Path) -> list[os.DirEntry[str]] | None:
        try:
            with os.scandir(folder) as entries:
                return sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            self.problems.append(ScanProblem(folder, f"cannot read folder: "
                                                     f"{_describe_error(exc)}"))
            return None

    def walk(self, folder: Path, depth: int = 0) -> None:
        check_cancel(self.reporter)
        try:
            stat = folder.stat()
        except OSError as exc:
            self.problems.append(ScanProblem(folder, _describe_error(exc)))
            return
        if (stat.st_dev, stat.st_ino) in self.seen_dirs:
            return  # a link back to a folder already walked: skipping it breaks the loop
        self.seen_dirs.add((stat.st_dev, stat.st_ino))
        entries = self.list_folder(folder)
        if entries is None:
            return
        self.folders_done += 1
        self.reporter.progress(self.folders_done, 0, str(folder))

        files: list[Path] = []
        subdirs: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
                if entry.is_symlink() and not (is_dir or is_file):
                    os.stat(path)  # raises with the reason the link is unusable
            except OSError as exc:
                if path.suffix in (".gguf", ".safetensors") or not path.suffix:
                    self.problems.append(ScanProblem(path, _describe_error(exc)))
                continue
            if is_incomplete_output(path, is_dir):
                self.incomplete.append(incomplete_output_at(path))
            elif is_dir and not entry.name.startswith("."):
                subdirs.append(path)
            elif is_file:
                files.append(path)

        ggufs = [f for f in files if f.suffix == ".gguf"]
        for shards, count in group_gguf_files(ggufs):
            check_cancel(self.reporter)
            self.add(describe_gguf(shards, count))
        if looks_like_hf_folder(f.name for f in files):
            check_cancel(self.reporter)
            self.add(describe_hf_folder(folder))
            return  # a model folder's subfolders belong to the model
        if depth >= MAX_DEPTH:
            if subdirs:
                self.problems.append(ScanProblem(folder, f"not searched deeper than "
                                                         f"{MAX_DEPTH} levels"))
            return
        for subdir in subdirs:
            self.walk(subdir, depth + 1)


def describe_path(path: Path) -> ModelInfo | None:
    """The model a single path names (a GGUF file, a shard, a model folder), or None.
    A file without the .gguf suffix is a GGUF when it starts with the magic (Ollama blobs)."""
    if path.is_file() and path.suffix != ".gguf" and has_gguf_magic(path):
        return describe_gguf([path])
    if path.is_file() and path.suffix == ".gguf":
        info = split_shard_info(path)
        if info is None:
            return describe_gguf([path])
        base, _, count = info
        siblings = [p for p in path.parent.glob(f"{base}-*-of-{count:05d}.gguf")
                    if split_shard_info(p)]
        return describe_gguf(sorted(siblings), count)
    if path.is_dir():
        try:
            names = [p.name for p in path.iterdir()]
        except OSError as exc:
            return broken_model(path, "hf", [Problem(f"cannot read folder: "
                                                     f"{_describe_error(exc)}", fatal=True)])
        if looks_like_hf_folder(names):
            return describe_hf_folder(path)
    return None


def scan_hf_cache(cache_dir: Path | None, reporter: Reporter) -> tuple[list[ModelInfo],
                                                                      list[ScanProblem]]:
    """Models in the local Hugging Face cache, one per repo (its newest revision)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return [], []
    except OSError as exc:
        where = Path(cache_dir) if cache_dir else Path("~/.cache/huggingface/hub").expanduser()
        return [], [ScanProblem(where, f"cannot read the Hugging Face cache: "
                                       f"{_describe_error(exc)}")]
    problems = [ScanProblem(Path(str(cache.cache_dir)), str(w)) for w in cache.warnings]
    models: list[ModelInfo] = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id.lower()):
        check_cancel(reporter)
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        snapshot = Path(revision.snapshot_path)
        walker = _Walker(reporter)
        walker.walk(snapshot)
        problems.extend(walker.problems)
        for model in walker.models:
            suffix = "" if model.path == snapshot else f" · {model.name}"
            models.append(_with_source(model, f"{repo.repo_id}{suffix}", repo.repo_id))
    return models, problems


def _with_source(model: ModelInfo, name: str, repo_id: str) -> ModelInfo:
    return replace(model, name=name, source="hf-cache", repo_id=repo_id)


def scan_paths(paths: Iterable[str | Path], *, include_hf_cache: bool = False,
               hf_cache_dir: Path | None = None, include_app_libraries: bool = False,
               reporter: Reporter | None = None) -> ScanResult:
    """Every model under `paths` (files or folders), and in the HF cache and other apps'
    libraries (Ollama, LM Studio) if asked."""
    reporter = reporter or NullReporter()
    walker = _Walker(reporter)
    for raw in paths:
        path = Path(raw).expanduser()
        if not os.path.lexists(path):
            walker.problems.append(ScanProblem(path, "does not exist"))
        elif is_incomplete_output(path, path.is_dir()):
            walker.incomplete.append(incomplete_output_at(path))
        elif path.is_dir():
            walker.walk(path)
        elif path.is_file():
            model = describe_path(path)
            if model is None:
                walker.problems.append(ScanProblem(path, "not a model file (GGUF) or folder"))
            else:
                walker.add(model)
        else:
            try:
                os.stat(path)
                walker.problems.append(ScanProblem(path, "not a file or folder"))
            except OSError as exc:
                walker.problems.append(ScanProblem(path, _describe_error(exc)))
    if include_hf_cache:
        models, problems = scan_hf_cache(hf_cache_dir, reporter)
        for model in models:
            walker.add(model)
        walker.problems.extend(problems)
    if include_app_libraries:
        from app.core.formats.app_libraries import default_app_libraries, scan_app_library

        for library in default_app_libraries():
            models, found = scan_app_library(library, reporter)
            for model in models:
                if model.source == "ollama":
                    # Tags that share a blob (smollm2:latest, smollm2:135m) are listed under
                    # each name, as Ollama lists them.
                    walker.models.append(model)
                else:
                    walker.add(model)
            walker.problems.extend(ScanProblem(path, text) for path, text in found)
    return ScanResult(tuple(walker.models), tuple(walker.problems), tuple(walker.incomplete))


def inspect_path(path: str | Path) -> ModelInfo:
    """Describe the one model at `path` (or an Ollama model named with its tag,
    `smollm2:135m`); raise `BadInputError` if there is none."""
    name = str(path)
    path = Path(path).expanduser()
    if not os.path.lexists(path):
        from app.core.formats.app_libraries import find_ollama_model

        ollama = find_ollama_model(name) if ":" in name else None
        if ollama is not None:
            return ollama  # an Ollama name (smollm2:135m) for a model in its store
        raise BadInputError("no such file or folder", path=path)
    try:
        os.stat(path)
    except OSError as exc:
        raise BadInputError(_describe_error(exc), path=path) from None
    model = describe_path(path)
    if model is None:
        raise BadInputError("not a model: expected a .gguf file or a folder with config.json "
                            "and safetensors weights", path=path)
    return model


@dataclass(frozen=True)
class ScanRequest:
    """Job: scan folders (and optionally the HF cache) for models."""

    paths: tuple[Path, ...]
    include_hf_cache: bool = False
    hf_cache_dir: Path | None = None
    include_app_libraries: bool = False  # Ollama's and LM Studio's, where present
    progress_unit: ProgressUnit = "items"

    @property
    def title(self) -> str:
        where = ", ".join(p.name or str(p) for p in self.paths[:2])
        more = f" +{len(self.paths) - 2}" if len(self.paths) > 2 else ""
        if not self.paths:
            parts = [name for name, wanted in (("the HF cache", self.include_hf_cache),
                                               ("other apps' libraries",
                                                self.include_app_libraries)) if wanted]
            return f"Scan {' and '.join(parts) or 'the HF cache'}"
        cache = " and the HF cache" if self.include_hf_cache else ""
        return f"Scan {where}{more}{cache}"

    def run(self, reporter: Reporter) -> ScanResult:
        result = scan_paths(self.paths, include_hf_cache=self.include_hf_cache,
                            hf_cache_dir=self.hf_cache_dir,
                            include_app_libraries=self.include_app_libraries,
                            reporter=reporter)
        for problem in result.problems:
            reporter.log("warning", str(problem))
        for leftover in result.incomplete:
            reporter.log("warning", f"{leftover.path}: {INCOMPLETE_TEXT}")
        with_problems = sum(1 for m in result.models if m.problems)
        reporter.log("info", f"found {len(result.models)} model(s), {with_problems} with "
                             "problems")
        return result
