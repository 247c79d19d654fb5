"""One hierarchy of errors that carry what a user needs to act on them.

Every error renders as one line: what went wrong, where (file, tensor), and what to do.
`BadInputError` and its subclasses mean the user gave something unusable (CLI exit code 2);
`JobError` means a job that started could not finish (exit code 1).

An error whose remedy is an option of the job carries it as an `OptionFact` (the request's
field and the value that would help), never as a command-line flag: each front end words it
for its own controls (`worded`), the CLI as a flag, the window as the control that sets it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OptionFact:
    """An option of a request that is the remedy (or the cause) of an error.

    `name` is the request's field (`trust_remote_code`, `backend`, `device`, `overwrite`,
    `keep_type`, `require_tokenizer`, `use_chat_template`, `text_file`, ...); `value` is the
    setting that would help, or None when the option itself is at fault.
    """

    name: str
    value: str | bool | int | None = None


# A front end's words for an option ("--backend transformers", "choose transformers as the
# backend"), or None when it has no control for it.
OptionWords = Callable[[OptionFact], str | None]


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
        option: OptionFact | None = None,
    ) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.tensor = tensor
        self.hint = hint
        self.option = option
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

    def worded(self, words: OptionWords | None) -> str:
        """The message with the option worded by a front end (nothing added without one)."""
        return word_option(self.message, self.option, words)


def word_option(message: str, option: OptionFact | None, words: OptionWords | None) -> str:
    remedy = words(option) if words is not None and option is not None else None
    return f"{message} ({remedy})" if remedy else message


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
        option: OptionFact | None = None,
    ) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        super().__init__(reason, path=path, hint=hint, option=option)


class JobCancelled(JobError):
    """The user cancelled the job; nothing was written."""

    def __init__(self, reason: str = "cancelled by the user, nothing was written") -> None:
        super().__init__(reason)
