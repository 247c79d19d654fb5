"""The one place that sets up huggingface_hub for Modelyard: endpoint, token, offline mode.

huggingface_hub reads `HF_ENDPOINT` and `HF_HUB_OFFLINE` once, when it is imported; Modelyard
reads them when each call is made and passes the endpoint explicitly, so a test server or a
mirror set later still applies. The token is left to huggingface_hub (`HF_TOKEN`, then the
login's token file) and never passed through Modelyard's own code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from app.core.hub.errors import HubUnavailableError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/") or DEFAULT_ENDPOINT


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def ensure_online() -> None:
    """Fail fast, with the reason, when huggingface_hub is in offline mode."""
    if offline_mode():
        raise HubUnavailableError(
            "offline mode is on (HF_HUB_OFFLINE is set), so the Hub is not contacted",
            offline_mode=True, hint="local and cached models still work")


def hub_api() -> HfApi:
    from huggingface_hub import HfApi

    ensure_online()
    return HfApi(endpoint=hub_endpoint())


def repo_page(repo_id: str) -> str:
    return f"{hub_endpoint()}/{repo_id}"
