"""What a plan read: each input file's size, modification time and identity when it was planned.

A plan keeps byte offsets into its input files and runs later, in another process. A file that
was rewritten, truncated, grew or was replaced by another (a re-download, a second conversion
writing the same name, an HF cache snapshot update) in between would be read at the old offsets:
a confusing read error mid-job, or a silently wrong output. A job compares every input with its
stamp before it writes anything and refuses to run a plan whose inputs changed.

The stamp is the stat of the file a path resolves to (symlinks followed: an HF cache snapshot's
link to its blob stamps the blob). Reading a file, mapped or not, changes none of its fields.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import BadInputError

# The CLI plans again on every run, the window when its sheet opens: "start again" fits both.
_HINT = "nothing was written; start the job again so that it is planned from the file as it is now"


@dataclass(frozen=True)
class FileStamp:
    """One input file as the planner saw it."""

    path: Path  # as the plan names it
    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise BadInputError(f"cannot be read ({exc.strerror or exc})", path=path) from None
        return cls(path, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)

    def change(self) -> str | None:
        """What is different about the file now, or None when it is as it was stamped."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return "no longer exists (it was there when the plan was checked)"
        except OSError as exc:
            return f"can no longer be read ({exc.strerror or exc})"
        size = (f"size {self.size} → {stat.st_size} bytes"
                if stat.st_size != self.size else "")
        if (stat.st_ino, stat.st_dev) != (self.inode, self.device):
            return "was replaced by another file since the plan was checked" + (
                f" ({size})" if size else "")
        if size:
            return f"changed since the plan was checked: {size}"
        if stat.st_mtime_ns != self.mtime_ns:
            return ("changed since the plan was checked: it was rewritten (same size, new "
                    "modification time)")
        return None


def stamp_files(paths: Iterable[Path]) -> tuple[FileStamp, ...]:
    """A stamp of each file, once each, in the order given."""
    return tuple(FileStamp.of(path) for path in dict.fromkeys(paths))


def check_unchanged(stamps: Iterable[FileStamp]) -> None:
    """Refuse (BadInputError naming the file) when any input differs from its stamp."""
    for stamp in stamps:
        change = stamp.change()
        if change is not None:
            raise BadInputError(change, path=stamp.path, hint=_HINT)
