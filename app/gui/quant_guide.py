"""What each output type is for, in words a user can choose by: the groups the convert sheet
shows, a one-line note per type, and bits per weight measured on the planned file."""

from __future__ import annotations

from app.core.estimate.verdict import Candidate
from app.core.quant import TARGETS

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Full precision", ("F32", "F16", "BF16")),
    ("8-bit", ("Q8_0",)),
    ("K-quants", ("Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M",
                  "Q3_K_S", "Q2_K")),
    ("Legacy", ("Q5_1", "Q5_0", "Q4_1", "Q4_0")),
)

ADVICE = {
    "F32": "for further processing; too big to run",
    "F16": "no loss for most models; twice the size of Q8_0",
    "BF16": "no loss for bf16-trained models; needs a recent CPU or GPU",
    "Q8_0": "nearly lossless at half of F16",
    "Q6_K": "close to Q8_0 at three quarters of its size",
    "Q5_K_M": "very good quality, a little larger than Q4_K_M",
    "Q5_K_S": "good quality, slightly smaller than Q5_K_M",
    "Q4_K_M": "the usual balance of size and quality",
    "Q4_K_S": "a little smaller than Q4_K_M, a little worse",
    "Q3_K_L": "noticeable loss; when a 4-bit type does not fit",
    "Q3_K_M": "clear loss; when a 4-bit type does not fit",
    "Q3_K_S": "large loss; only to make a big model fit",
    "Q2_K": "heavy loss; a last resort",
    "Q5_1": "older type; Q5_K_M is better at the same size",
    "Q5_0": "older type; Q5_K_S is better at the same size",
    "Q4_1": "older type; Q4_K_M is better at a similar size",
    "Q4_0": "older type; Q4_K_S is better at the same size",
}


def group_of(quant: str) -> str:
    return next((name for name, members in GROUPS if quant in members), "Other")


def bits_per_weight(candidate: Candidate) -> float | None:
    """Measured on the file the candidate is (or would be), norms and embeddings included."""
    parameters = candidate.model.parameters
    return 8 * candidate.model.file_size / parameters if parameters else None


def type_note(quant: str) -> str:
    target = TARGETS.get(quant)
    summary = target.summary if target is not None else quant
    advice = ADVICE.get(quant)
    return f"{summary}: {advice}" if advice else summary
