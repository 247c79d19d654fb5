"""What commands print: plain-text tables and JSON documents."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                 right_align: Sequence[int] = ()) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [cell.rjust(widths[i]) if i in right_align else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_json(data: Any) -> None:
    """One indented JSON document on stdout (what `--json` prints)."""
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
