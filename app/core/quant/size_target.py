"""A type per tensor under a size: the least total quantization error that fits.

Each tensor offers candidates (a type, its bytes, its measured error). Choosing one per tensor
to minimise the summed error under a byte budget is a multiple-choice knapsack; the classic
answer used here is greedy on each tensor's lower convex hull (the upgrade buying the most
error reduction per extra byte first), then a pass that spends what is left on any single
upgrade that still fits. The standard mixes compete too: when one that fits has a lower error
than the greedy choice, it wins, so a custom mix is never worse than the best standard one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.core.errors import OptionError, OptionFact

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]I?B|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`4.2GiB`, `900MB`, `1500000000` → bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise OptionError(f"target size {text!r} is not a size", option=OptionFact("target_size"),
                          hint="write it like 4.2GiB, 900MiB or 4GB")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if value < 1:
        raise OptionError(f"target size {text!r} must be positive",
                          option=OptionFact("target_size"))
    return int(value)


@dataclass(frozen=True)
class Candidate:
    type_name: str
    n_bytes: int
    error: float  # importance-weighted squared error of the tensor in this type


def _hull(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates on the lower convex hull of (bytes, error), smallest first: the only
    ones a greedy by error reduction per byte ever takes."""
    points: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.n_bytes, c.error)):
        if points and c.error >= points[-1].error:
            continue  # bigger and not better
        while len(points) >= 2:
            a, b = points[-2], points[-1]
            # b is above the segment a-c: never the best step.
            if (b.error - a.error) * (c.n_bytes - a.n_bytes) >= \
                    (c.error - a.error) * (b.n_bytes - a.n_bytes):
                points.pop()
            else:
                break
        points.append(c)
    return points


def choose_types(candidates: Mapping[str, Sequence[Candidate]], budget: int,
                 standard: Mapping[str, Mapping[str, str]] | None = None,
                 ) -> tuple[dict[str, Candidate], str | None]:
    """The candidate for each tensor that minimises the total error within `budget` bytes,
    and the name of the standard mix chosen instead when one of `standard` (mix → tensor →
    type) fits with less error (else None). Raises OptionError when even the smallest
    candidates do not fit."""
    hulls = {name: _hull(c) for name, c in candidates.items()}
    chosen = {name: hull[0] for name, hull in hulls.items()}
    used = sum(c.n_bytes for c in chosen.values())
    if used > budget:
        raise OptionError(f"the smallest types Modelyard can write need {used} bytes for the "
                          f"weights, more than the {budget} bytes the size leaves for them",
                          hint="choose a larger size")
    step = {name: 0 for name in hulls}
    while True:
        best_name, best_gain = None, 0.0
        for name, hull in hulls.items():
            index = step[name]
            if index + 1 >= len(hull):
                continue
            current, upgrade = hull[index], hull[index + 1]
            extra = upgrade.n_bytes - current.n_bytes
            if used + extra > budget:
                continue
            gain = (current.error - upgrade.error) / max(extra, 1)
            if gain > best_gain:
                best_name, best_gain = name, gain
        if best_name is None:
            break
        index = step[best_name]
        used += hulls[best_name][index + 1].n_bytes - hulls[best_name][index].n_bytes
        step[best_name] = index + 1
        chosen[best_name] = hulls[best_name][index + 1]
    # Spend what is left: the single upgrade (hull or not) that lowers the error most.
    while True:
        best: tuple[float, str, Candidate] | None = None
        for name, options in candidates.items():
            for option in options:
                extra = option.n_bytes - chosen[name].n_bytes
                gain = chosen[name].error - option.error
                if gain > 0 and used + extra <= budget and (best is None or gain > best[0]):
                    best = (gain, name, option)
        if best is None:
            break
        used += best[2].n_bytes - chosen[best[1]].n_bytes
        chosen[best[1]] = best[2]
    custom_error = sum(c.error for c in chosen.values())
    winner = None
    for mix, types in (standard or {}).items():
        picked = _standard_choice(candidates, types)
        if picked is None:
            continue
        size = sum(c.n_bytes for c in picked.values())
        error = sum(c.error for c in picked.values())
        if size <= budget and error < custom_error:
            chosen, custom_error, winner = picked, error, mix
    return chosen, winner


def _standard_choice(candidates: Mapping[str, Sequence[Candidate]],
                     types: Mapping[str, str]) -> dict[str, Candidate] | None:
    picked = {}
    for name, options in candidates.items():
        match = next((c for c in options if c.type_name == types.get(name)), None)
        if match is None:
            return None
        picked[name] = match
    return picked
