"""How the window words a job's option: as the control that sets it, or not at all when the
window has none (it never tells a user to pass a command-line flag)."""

from __future__ import annotations

from app.core.errors import OptionFact


def gui_words(option: OptionFact) -> str | None:
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
