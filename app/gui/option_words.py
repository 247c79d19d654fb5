"""How the window words a job's option: as the control that sets it in the sheet the job came
from, or not at all when that sheet has none (it never tells a user to pass a command-line
flag)."""

from __future__ import annotations

from app.core.errors import OptionFact, OptionWords


def gui_words(option: OptionFact) -> str | None:
    """The convert sheet's and the Test tab's controls (the words for any other job)."""
    name, value = option.name, option.value
    if name == "backend" and isinstance(value, str):
        return f"choose {value} as the Backend in the Test tab"
    if name == "device" and value == "cpu":
        return "choose CPU as the Device in the convert sheet's advanced options"
    if name == "overwrite" and value is True:
        return "tick “Replace the output if it exists” in the convert sheet"
    if name == "require_tokenizer" and value is False:
        return "untick “Stop if the model has no tokenizer” in the convert sheet"
    if name == "text_file":
        return "choose another file with the Text button"
    return None


def merge_words(option: OptionFact) -> str | None:
    """The merge sheet's controls: it has no device or replace choice, so those go unworded (an
    existing output's message already says to choose another name)."""
    if option.name == "out_type":
        return "choose another GGUF type under the Output folder in the merge sheet"
    return None


def relayout_words(option: OptionFact) -> str | None:
    """The Fix expert layout sheet's controls: the layout (it has no replace choice)."""
    if option.name == "experts":
        return "choose the other layout in the Fix expert layout sheet"
    return None


def job_words(request: object) -> OptionWords:
    """The words for the options of `request`, a job from one of the window's sheets."""
    from app.core.convert.relayout import PlannedRelayout, RelayoutRequest
    from app.core.merge.job import MergeRequest

    if isinstance(request, MergeRequest):
        return merge_words
    if isinstance(request, (RelayoutRequest, PlannedRelayout)):
        return relayout_words
    return gui_words
