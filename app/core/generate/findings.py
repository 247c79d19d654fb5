"""What the compatibility doctor reports: a finding is a sentence and the action to take."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import OptionFact

Severity = Literal["error", "warning", "info"]
NAMES_SHOWN = 8
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    severity: Severity  # error: will not load or will give garbage; warning: may fail
    text: str
    action: str | None = None
    code: str = ""  # stable identifier for programs: "missing-tensors", "unknown-class", ...
    tensors: tuple[str, ...] = ()  # every tensor concerned, when there are tensors to name
    option: OptionFact | None = None  # the job option that is the remedy, for a front end to word

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "text": self.text,
                "action": self.action, "tensors": list(self.tensors),
                "option": None if self.option is None else {"name": self.option.name,
                                                            "value": self.option.value}}

    def __str__(self) -> str:
        return f"{self.severity}: {self.text}" + (f" → {self.action}" if self.action else "")


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])


def name_list(names: Iterable[str], limit: int = NAMES_SHOWN) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
