"""One hierarchy of errors that carry what a user needs to act on them.

Every error renders as one line: what went wrong, where (file, tensor), and what to do.
`BadInputError` and its subclasses mean the user gave something unusable (CLI exit code 2);
`JobError` means a job that started could not finish (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


class ModelyardError(Exception):
    """Base of every error Modelyard raises on purpose."""

    exit_code = 1

    def __init__(
        self,
        reason: str,
        *,
        path: str | Path | None = None,
        tensor: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.tensor = tensor
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        text = f"{': '.join(where)}: {self.reason}" if where else self.reason
        if self.hint:
            text = f"{text}. {self.hint}"
        return " ".join(text.split("\n"))

    def __str__(self) -> str:
        return self.message


class BadInputError(ModelyardError):
    """The input (file, path, option) cannot be used as given."""

    exit_code = 2


class FormatError(BadInputError):
    """A file is corrupt, truncated, or not the format it claims to be."""


class UnsupportedError(BadInputError):
    """A valid input that Modelyard does not handle (architecture, tensor type, layout)."""


class OptionError(BadInputError):
    """A nonsense option or combination of options."""


class UnsafeInputError(BadInputError):
    """Loading the input would run code (pickle, remote code) and the user has not allowed it."""


class JobError(ModelyardError):
    """A job that started could not finish."""


class InsufficientResourcesError(JobError):
    """Not enough RAM, VRAM or disk for a job; carries the numbers."""

    def __init__(
        self,
        reason: str,
        *,
        needed_bytes: int,
        available_bytes: int,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        super().__init__(reason, path=path, hint=hint)


class JobCancelled(JobError):
    """The user cancelled the job; nothing was written."""

    def __init__(self, reason: str = "cancelled by the user, nothing was written") -> None:
        super().__init__(reason)
