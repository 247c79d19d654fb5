"""Search the Hub for models: text, author, library, sort order, one page at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Literal

from app.core.errors import OptionError
from app.core.hub.client import hub_api, hub_endpoint
from app.core.hub.errors import hub_errors

SortKey = Literal["downloads", "likes", "recent"]
SORT_KEYS: dict[str, str] = {"downloads": "downloads", "likes": "likes",
                             "recent": "last_modified"}
LIBRARIES = ("gguf", "transformers")
MAX_LIMIT = 1000
_EXPAND = ["downloads", "likes", "lastModified", "gated", "tags", "library_name"]


@dataclass(frozen=True)
class HubModel:
    """One search result."""

    repo_id: str
    downloads: int
    likes: int
    last_modified: datetime | None
    gated: bool  # files need an accepted licence
    has_gguf: bool
    has_safetensors: bool
    library: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.repo_id, "downloads": self.downloads, "likes": self.likes,
                "last_modified": self.last_modified.isoformat() if self.last_modified else None,
                "gated": self.gated, "has_gguf": self.has_gguf,
                "has_safetensors": self.has_safetensors, "library": self.library}


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    author: str | None = None
    library: str | None = None  # gguf | transformers
    sort: SortKey = "downloads"
    limit: int = 20  # results per page

    def check(self) -> None:
        if self.sort not in SORT_KEYS:
            raise OptionError(f"sort must be one of {', '.join(SORT_KEYS)}, not {self.sort!r}")
        if self.library is not None and self.library not in LIBRARIES:
            raise OptionError(f"library must be one of {', '.join(LIBRARIES)}, not "
                              f"{self.library!r}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise OptionError(f"the page size must be 1 to {MAX_LIMIT}, not {self.limit}")


@dataclass(frozen=True)
class SearchPage:
    query: SearchQuery
    page: int  # 0-based
    models: tuple[HubModel, ...]
    has_more: bool

    def to_json(self) -> dict[str, Any]:
        return {"query": self.query.text, "page": self.page, "has_more": self.has_more,
                "models": [m.to_json() for m in self.models]}


def _hub_model(info: Any) -> HubModel:
    tags = set(info.tags or ())
    library = info.library_name
    return HubModel(
        repo_id=info.id, downloads=int(info.downloads or 0), likes=int(info.likes or 0),
        last_modified=info.last_modified, gated=bool(info.gated),
        has_gguf="gguf" in tags or library == "gguf" or bool(getattr(info, "gguf", None)),
        has_safetensors="safetensors" in tags or bool(getattr(info, "safetensors", None)),
        library=library)


def search_models(query: SearchQuery, page: int = 0) -> SearchPage:
    """Page `page` of the results. The Hub pages by cursor (Link headers, which
    huggingface_hub follows); a later page is read through the earlier ones."""
    query.check()
    if page < 0:
        raise OptionError(f"page must be 0 or more, not {page}")
    start = page * query.limit
    api = hub_api()
    with hub_errors(query.author or "models", endpoint=hub_endpoint()):
        found = api.list_models(search=query.text or None, author=query.author or None,
                                filter=query.library, sort=SORT_KEYS[query.sort],  # type: ignore[arg-type]
                                limit=start + query.limit + 1, expand=_EXPAND)  # type: ignore[arg-type]
        items = [_hub_model(info) for info in islice(found, start, start + query.limit + 1)]
    return SearchPage(query, page, tuple(items[:query.limit]), len(items) > query.limit)
