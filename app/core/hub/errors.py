"""What can go wrong talking to the Hub, as Modelyard's typed errors.

huggingface_hub raises its own classes (and httpx's for the network); `hub_errors()` turns them
into one-line errors that name the repo and file and say what the Hub answered. The token is
never part of a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.core.errors import BadInputError, JobError


class HubAccessError(BadInputError):
    """The Hub refused access: a gated repo whose licence is not accepted, a private repo, or a
    token it does not accept. `reason_code` is "gated", "private" or "token"."""

    def __init__(self, reason: str, *, reason_code: str, hint: str | None = None) -> None:
        self.reason_code = reason_code
        super().__init__(reason, hint=hint)


class HubNotFoundError(BadInputError):
    """No such repo, revision or file on the Hub."""


class HubUnavailableError(JobError):
    """The Hub cannot be reached: offline mode, no network, or a server error."""

    def __init__(self, reason: str, *, offline_mode: bool = False,
                 hint: str | None = None) -> None:
        self.offline_mode = offline_mode
        super().__init__(reason, hint=hint)


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2 as httpx  # huggingface_hub 2.x
    except ImportError:  # pragma: no cover - huggingface_hub 1.x uses httpx
        import httpx  # type: ignore[no-redef]
    return (httpx.TransportError, ConnectionError, TimeoutError)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


@contextmanager
def hub_errors(repo_id: str, filename: str | None = None,
               revision: str | None = None, endpoint: str = "") -> Iterator[None]:
    """Translate huggingface_hub's and the network's errors inside the block."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{endpoint or 'https://huggingface.co'}/{repo_id}"
    try:
        yield
    except GatedRepoError:
        raise HubAccessError(
            f"{repo_id} is a gated model: its files can only be downloaded after its licence "
            "is accepted (the Hub answered 403)", reason_code="gated",
            hint=f"accept the licence on {page} with your account, then use a token of that "
                 "account (HF_TOKEN or the Hugging Face login)") from None
    except RepositoryNotFoundError as exc:
        if _status(exc) == 401:
            raise HubAccessError(
                f"{repo_id} is private or does not exist (the Hub answered 401: not "
                "authorised)", reason_code="private",
                hint="check the name; for a private repo, use a token with access to it "
                     "(HF_TOKEN or the Hugging Face login)") from None
        raise HubNotFoundError(f"no model repo {repo_id} on the Hub (404)",
                               hint="check the name (owner/repo)") from None
    except RevisionNotFoundError:
        raise HubNotFoundError(f"{repo_id} has no revision {revision or 'main'!r} (404)") \
            from None
    except RemoteEntryNotFoundError:
        raise HubNotFoundError(f"{repo_id} has no file {filename!r} (404)",
                               hint="list the repo's files to see what it has") from None
    except OfflineModeIsEnabled:
        raise HubUnavailableError(
            "offline mode is on (HF_HUB_OFFLINE is set), so the Hub is not contacted",
            offline_mode=True, hint="local and cached models still work") from None
    except HfHubHTTPError as exc:
        status = _status(exc)
        if status == 401:
            raise HubAccessError("the Hub refused the Hugging Face token (401: invalid "
                                 "credentials)", reason_code="token",
                                 hint="replace the token (HF_TOKEN or the Hugging Face "
                                      "login)") from None
        if status == 403:
            raise HubAccessError(f"the Hub refused access to {repo_id} (403)",
                                 reason_code="private",
                                 hint="use a token with access to it") from None
        if status == 404:
            raise HubNotFoundError(f"{repo_id}: not found on the Hub (404)") from None
        raise HubUnavailableError(f"the Hub answered {status} for {repo_id}",
                                  hint="try again later") from None
    except _transport_errors() as exc:
        raise HubUnavailableError(
            f"cannot reach the Hub at {endpoint or 'https://huggingface.co'} "
            f"({type(exc).__name__})", hint="check the network; local and cached models "
                                            "still work") from None
