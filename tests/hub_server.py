"""A small Hugging Face Hub for the tests: the routes the real `huggingface_hub` client uses,
served from real files on 127.0.0.1.

Routes (as huggingface_hub 2.x calls them):
  GET  /api/models?search=&author=&filter=&sort=&limit=&cursor=   search, paged by Link headers
  GET  /api/models/{repo}[/revision/{rev}][?blobs=true]            model info with siblings
  HEAD/GET /{repo}/resolve/{rev}/{file}                            file metadata and bytes
  GET  /cdn/{sha256}                                               where LFS files redirect to

Small (non-LFS) files are served directly with their git blob id as ETag; LFS files (`.gguf`,
`.safetensors`) answer the resolve call with a 302 to `/cdn/` on `localhost` (another host name
for the client, as the real Hub's CDN is) carrying X-Linked-Size and X-Linked-Etag (sha256).
Range requests give 206 with Content-Range. Errors can be injected per repo (401, 403 gated,
404) and a download can be cut halfway.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from app.core.jobs import RecordingReporter

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")
GOOD_TOKEN = "hf_test_token_that_works"


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, Path | bytes]
    downloads: int = 0
    likes: int = 0
    days_old: int = 1
    tags: tuple[str, ...] = ()
    library_name: str | None = None
    gated: bool | str = False  # "auto"/"manual": files need an accepted licence (403)
    private: bool = False  # needs GOOD_TOKEN (401 without)
    base_model: str | None = None
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:
            self.sha = hashlib.sha1(self.repo_id.encode()).hexdigest()

    def data(self, name: str) -> bytes:
        source = self.files[name]
        return source if isinstance(source, bytes) else source.read_bytes()

    def size(self, name: str) -> int:
        source = self.files[name]
        return len(source) if isinstance(source, bytes) else source.stat().st_size

    @property
    def last_modified(self) -> str:
        moment = datetime(2026, 11, 1, tzinfo=timezone.utc) - timedelta(days=self.days_old)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubServer:
    """Start with `start()`; `url` is the endpoint to give the client (HF_ENDPOINT)."""

    repos: dict[str, HubRepo] = field(default_factory=dict)
    page_size: int = 2  # the real Hub pages at 1000; small here so paging is exercised
    fail: dict[str, int] = field(default_factory=dict)  # repo_id → 401 | 403 | 404
    cut_after: dict[str, int] = field(default_factory=dict)  # file name → bytes, cut once
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _sha_cache: dict[tuple[str, str], str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    def add(self, repo: HubRepo) -> HubRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def sha256(self, repo: HubRepo, name: str) -> str:
        key = (repo.repo_id, name)
        if key not in self._sha_cache:
            source = repo.files[name]
            digest = hashlib.sha256()
            if isinstance(source, bytes):
                digest.update(source)
            else:
                with open(source, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            self._sha_cache[key] = digest.hexdigest()
        return self._sha_cache[key]

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # The JSON the real Hub returns for a model, with what list and info calls both carry.
    def model_json(self, repo: HubRepo, blobs: bool) -> dict[str, Any]:
        siblings = []
        for name in sorted(repo.files):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                size = repo.size(name)
                sibling["size"] = size
                sibling["blobId"] = git_blob_id(repo.data(name)) if not is_lfs(name) else \
                    hashlib.sha1(name.encode()).hexdigest()
                if is_lfs(name):
                    sibling["lfs"] = {"size": size, "sha256": self.sha256(repo, name),
                                      "pointerSize": 134}
            siblings.append(sibling)
        data: dict[str, Any] = {
            "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": repo.sha,
            "lastModified": repo.last_modified, "createdAt": repo.last_modified,
            "private": repo.private, "gated": repo.gated, "disabled": False,
            "downloads": repo.downloads, "likes": repo.likes, "tags": list(repo.tags),
            "library_name": repo.library_name, "siblings": siblings,
        }
        if repo.base_model:
            data["cardData"] = {"base_model": repo.base_model}
        return data


def _matches(repo: HubRepo, params: dict[str, list[str]]) -> bool:
    search = params.get("search", [""])[0].lower()
    author = params.get("author", [""])[0]
    if search and search not in repo.repo_id.lower():
        return False
    if author and repo.repo_id.split("/")[0] != author:
        return False
    for wanted in params.get("filter", []):
        if wanted not in repo.tags and wanted != repo.library_name:
            return False
    return not repo.private


_SORT_KEYS = {"downloads": lambda r: r.downloads, "likes": lambda r: r.likes,
              "lastModified": lambda r: -r.days_old}
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(/revision/(?P<rev>[^/]+))?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests read `requests` instead of a log on stderr

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            pass  # a client that cancels drops the connection mid-body

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        hub = self.server_state
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        params = parse_qs(parts.query)
        hub.requests.append((self.command, self.path, self.headers.get("Range")))
        if path == "/api/models":
            self._search(params)
        elif parts.path.startswith("/cdn/"):
            self._cdn(parts.path.removeprefix("/cdn/"), head)
        elif match := INFO.match(path):
            self._info(match["repo"], match["rev"], params.get("blobs") == ["true"] or
                       params.get("blobs") == ["True"])
        elif match := RESOLVE.match(path):
            self._resolve(match["repo"], match["rev"], match["file"], head)
        else:
            self._error(404, "RepoNotFound", "Not found")

    # Errors as the real Hub sends them: a status, X-Error-Code and a JSON body.
    def _error(self, status: int, code: str | None, message: str,
               repo: HubRepo | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {GOOD_TOKEN}"

    def _repo(self, repo_id: str, for_file: bool) -> HubRepo | None:
        """The repo, or None after sending the error the real Hub would send."""
        hub = self.server_state
        repo = hub.repos.get(repo_id)
        forced = hub.fail.get(repo_id)
        auth = self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {GOOD_TOKEN}":
            self._error(401, None, "Invalid credentials in Authorization header")
        elif forced == 404 or repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        elif forced == 401 or (repo.private and not self._authorised()):
            self._error(401, "RepoNotFound", "Invalid username or password.")
        elif for_file and (forced == 403 or repo.gated):
            self._error(403, "GatedRepo", "Access to model " + repo_id + " is restricted. "
                        "You must have access to it and be authenticated to access it.")
        else:
            return repo
        return None

    def _search(self, params: dict[str, list[str]]) -> None:
        hub = self.server_state
        found = [r for r in hub.repos.values() if _matches(r, params)]
        sort = params.get("sort", [""])[0]
        if sort in _SORT_KEYS:
            found.sort(key=_SORT_KEYS[sort], reverse=True)
        limit = int(params.get("limit", ["1000"])[0])
        cursor = int(params.get("cursor", ["0"])[0])
        page = found[cursor:cursor + min(limit, hub.page_size)]
        headers = {}
        if cursor + len(page) < len(found):
            query = "&".join(f"{k}={quote(v)}" for k, values in params.items() for v in values
                             if k != "cursor")
            headers["Link"] = (f'<{hub.url}/api/models?{query}&cursor={cursor + len(page)}>; '
                               'rel="next"')
        self._json([hub.model_json(r, blobs=False) for r in page], headers)

    def _info(self, repo_id: str, revision: str | None, blobs: bool) -> None:
        repo = self._repo(repo_id, for_file=False)
        if repo is None:
            return
        if revision not in (None, "main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id", repo)
            return
        self._json(self.server_state.model_json(repo, blobs))

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        hub = self.server_state
        repo = self._repo(repo_id, for_file=True)
        if repo is None:
            return
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id", repo)
            return
        if name not in repo.files:
            self._error(404, "EntryNotFound", "Entry not found", repo)
            return
        if is_lfs(name):
            sha = hub.sha256(repo, name)
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{hub.port}/cdn/"
                                         f"{quote(repo_id, safe='')}/{quote(name, safe='')}")
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(repo.size(name)))
            self.send_header("ETag", f'"{git_blob_id(name.encode())}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_bytes(repo, name, head, {"X-Repo-Commit": repo.sha,
                                            "ETag": f'"{git_blob_id(repo.data(name))}"'})

    def _cdn(self, rest: str, head: bool) -> None:
        repo_part, _, name_part = rest.partition("/")
        repo = self.server_state.repos.get(unquote(repo_part))
        name = unquote(name_part)
        if repo is None or name not in repo.files:
            self._error(404, None, "NoSuchKey")
            return
        self._send_bytes(repo, name, head, {"ETag": f'"{self.server_state.sha256(repo, name)}"'})

    def _send_bytes(self, repo: HubRepo, name: str, head: bool, headers: dict[str, str]) -> None:
        hub = self.server_state
        size = repo.size(name)
        start, end = 0, size - 1
        ranged = self.headers.get("Range")
        if ranged:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())
            if match is None or int(match[1]) >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        source = repo.files[name]
        cut = hub.cut_after.pop(name, None) if not ranged or start < (
            hub.cut_after.get(name) or 0) else None
        stop = end + 1 if cut is None else min(max(cut, start), end + 1)
        if isinstance(source, bytes):
            self.wfile.write(source[start:stop])
        else:
            with open(source, "rb") as handle:
                handle.seek(start)
                remaining = stop - start
                while remaining > 0:
                    chunk = handle.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        if cut is not None:
            # A connection lost mid-body: the client sees fewer bytes than Content-Length.
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


def use_test_hub(monkeypatch: Any, tmp_path: Path, server: HubServer) -> Path:
    """Point huggingface_hub and Modelyard at `server`, online, with no token of the user's
    and an HF cache under tmp; returns that cache folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    return cache


def fresh_test_hub(monkeypatch: Any, tmp_path: Path, server: HubServer) -> HubServer:
    """`use_test_hub` for one test of a module-scoped server: its request log, forced
    failures, cut connections and checksums start empty; the HF cache folder is kept as
    `server.cache`."""
    server.cache = use_test_hub(monkeypatch, tmp_path, server)  # type: ignore[attr-defined]
    server.requests.clear()
    server.fail.clear()
    server.cut_after.clear()
    server._sha_cache.clear()
    return server


@dataclass
class CancelHalfway(RecordingReporter):
    """Cancels its job once half the bytes are reported."""

    def progress(self, done: float, total: float, text: str = "") -> None:
        super().progress(done, total, text)
        if total and done >= total / 2:
            self.token.cancel()


def standard_repos(root: Path, smollm2: Path, tiny_hf: Path | None = None) -> list[HubRepo]:
    """The repos the hub tests search and download from, built under `root`."""
    import factories

    root.mkdir(parents=True, exist_ok=True)
    dense = factories.make_gguf(root / "tiny.gguf")
    shards = factories.make_split_gguf(root, "tiny-Q8_0", n_shards=3)
    quants: dict[str, Path | bytes] = {
        "tiny-Q4_K_M.gguf": dense, "tiny-IQ3_XS.gguf": dense, "tiny.BF16.gguf": dense,
        **{f"Q8_0/{p.name}": p for p in shards}, "README.md": b"# tiny quants\n"}
    repos = [
        HubRepo("acme/SmolLM2-135M-Instruct-GGUF",
                {"SmolLM2-135M-Instruct.Q4_1.gguf": smollm2, "README.md": b"# SmolLM2\n"},
                downloads=900, likes=30, days_old=3, tags=("gguf", "llama"),
                library_name="gguf", base_model="HuggingFaceTB/SmolLM2-135M-Instruct"),
        HubRepo("acme/tiny-quants-GGUF", quants, downloads=50, likes=80, days_old=1,
                tags=("gguf",), library_name="gguf", base_model="acme/tiny-llama"),
        HubRepo("acme/gated-GGUF", {"tiny-Q4_K_M.gguf": dense}, downloads=10, likes=1,
                days_old=9, tags=("gguf",), gated="manual"),
        HubRepo("acme/private-model", {"tiny-Q4_K_M.gguf": dense}, private=True),
    ]
    tiny_hf = tiny_hf or write_tiny_llama(root / "tiny-llama")
    files: dict[str, Path | bytes] = {p.name: p for p in tiny_hf.iterdir() if p.is_file()}
    repos.append(HubRepo("acme/tiny-llama", files, downloads=300, likes=5, days_old=2,
                         tags=("transformers", "safetensors", "llama"),
                         library_name="transformers"))
    repos += [HubRepo(f"other/filler-{i}", {"config.json": b"{}"}, downloads=i, likes=i,
                      days_old=20 + i, tags=("transformers",), library_name="transformers")
              for i in range(3)]
    return repos


def write_tiny_llama(folder: Path, n_layers: int = 2, hidden: int = 64, ffn: int = 128,
                     vocab: int = 320) -> Path:
    """A tiny Llama checkpoint in transformers' layout (config.json, two safetensors shards
    and their index), written with numpy: the Hub tests need its headers, not torch."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    heads, kv_heads = 4, 2
    kv = hidden // heads * kv_heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": n_layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": 256, "vocab_size": vocab, "rms_norm_eps": 1e-5,
              "torch_dtype": "float32", "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    shards: list[dict[str, np.ndarray]] = [{"model.embed_tokens.weight": weights(vocab, hidden)},
                                           {}]
    for layer in range(n_layers):
        prefix = f"model.layers.{layer}"
        shards[layer % 2].update({
            f"{prefix}.self_attn.q_proj.weight": weights(hidden, hidden),
            f"{prefix}.self_attn.k_proj.weight": weights(kv, hidden),
            f"{prefix}.self_attn.v_proj.weight": weights(kv, hidden),
            f"{prefix}.self_attn.o_proj.weight": weights(hidden, hidden),
            f"{prefix}.mlp.gate_proj.weight": weights(ffn, hidden),
            f"{prefix}.mlp.up_proj.weight": weights(ffn, hidden),
            f"{prefix}.mlp.down_proj.weight": weights(hidden, ffn),
            f"{prefix}.input_layernorm.weight": np.ones(hidden, np.float32),
            f"{prefix}.post_attention_layernorm.weight": np.ones(hidden, np.float32)})
    shards[1].update({"model.norm.weight": np.ones(hidden, np.float32),
                      "lm_head.weight": weights(vocab, hidden)})
    weight_map = {}
    for index, tensors in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@contextmanager
def serving(*repos: HubRepo) -> Iterator[HubServer]:
    """A started test Hub holding `repos`, stopped on exit."""
    server = HubServer()
    for repo in repos:
        server.add(repo)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serving_standard_repos(root: Path, smollm2: Path) -> Iterator[HubServer]:
    """A started test Hub holding `standard_repos`, stopped on exit."""
    with serving(*standard_repos(root, smollm2)) as server:
        yield server
