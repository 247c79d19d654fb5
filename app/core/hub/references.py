"""What a user may paste or drop to name a Hub model: `owner/repo`, or a Hub URL of the repo,
of a file in it (`/blob/main/x.gguf`, `/resolve/main/x.gguf`) or of a revision (`/tree/v1`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from app.core.errors import OptionError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")


@dataclass(frozen=True)
class HubReference:
    repo_id: str
    filename: str | None = None
    revision: str | None = None


def is_repo_id(text: str) -> bool:
    return bool(REPO_ID.match(text)) and ".." not in text


def check_repo_id(repo_id: str) -> None:
    if not is_repo_id(repo_id):
        raise OptionError(f"{repo_id!r} is not a Hub model name (owner/repo)")


def parse_hub_reference(text: str, endpoint: str | None = None) -> HubReference | None:
    """The repo (and file or revision) `text` names, or None when it names none."""
    text = text.strip()
    if is_repo_id(text):
        return HubReference(text)
    if "://" not in text and text.split("/", 1)[0] in HUB_HOSTS:
        text = f"https://{text}"
    parts = urlsplit(text)
    hosts = set(HUB_HOSTS)
    if endpoint:
        hosts.add(urlsplit(endpoint).netloc)
    if parts.scheme not in ("http", "https") or parts.netloc not in hosts:
        return None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if segments and segments[0] in ("models", "datasets", "spaces"):
        if segments[0] != "models":
            return None
        segments = segments[1:]
    if len(segments) < 2 or not is_repo_id("/".join(segments[:2])):
        return None
    repo_id = "/".join(segments[:2])
    rest = segments[2:]
    if len(rest) >= 2 and rest[0] in ("blob", "resolve", "tree"):
        revision = rest[1]
        filename = "/".join(rest[2:]) or None
        return HubReference(repo_id, filename if rest[0] != "tree" else None, revision)
    return HubReference(repo_id)
