"""BPE pre-tokenizers: Hugging Face `tokenizer.json` shapes ↔ llama.cpp `tokenizer.ggml.pre` names.

llama.cpp picks the regexes that split text before BPE by the name in `tokenizer.ggml.pre`
(src/llama-vocab.cpp). Its converter finds the name by hashing the token ids of a fixed text,
which only works for the exact vocabularies it lists. Modelyard compares what decides the split
instead: the pre-tokenizer of `tokenizer.json`. Each entry below is a Hugging Face pre-tokenizer
whose split is exactly the regex list llama-vocab.cpp uses for that name (the regexes there are
quoted as "original regex from tokenizer.json"); so any vocabulary with that pre-tokenizer,
trained or not, tokenizes the same in both. Tests check it with llama.cpp itself.
The same table builds `tokenizer.json` back from a GGUF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Regexes as Hugging Face tokenizer.json files spell them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
            "invert": False}


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


def _sequence(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(items)}


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # llama.cpp's tokenizer.ggml.pre
    hf: dict[str, Any]  # tokenizer.json "pre_tokenizer"
    ignore_merges: bool = False  # llama.cpp sets it for these names, HF writes it in the model
    clean_spaces: bool = True  # llama.cpp's clean_spaces, HF's clean_up_tokenization_spaces


# First match wins when reading a GGUF back, so each name's canonical shape comes first.
PRE_TOKENIZERS: tuple[PreTokenizer, ...] = (
    # GPT-2's regex, which ByteLevel(use_regex=True) applies: llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2
    PreTokenizer("gpt-2", _byte_level(True)),
    # "\p{N}" then GPT-2's regex: LLAMA_VOCAB_PRE_TYPE_SMOLLM (no space clean-up) / STARCODER
    PreTokenizer("smollm", _sequence({"type": "Digits", "individual_digits": True},
                                     _byte_level(True)), clean_spaces=False),
    PreTokenizer("starcoder", _sequence({"type": "Digits", "individual_digits": True},
                                        _byte_level(True))),
    PreTokenizer("llama-bpe", _sequence(_split(LLAMA3_SPLIT), _byte_level(False)),
                 ignore_merges=True),
    PreTokenizer("qwen2", _sequence(_split(QWEN2_SPLIT), _byte_level(False)), clean_spaces=False),
    PreTokenizer("tekken", _sequence(_split(TEKKEN_SPLIT), _byte_level(False)),
                 ignore_merges=True, clean_spaces=False),
)
BY_NAME: dict[str, PreTokenizer] = {}
for _entry in PRE_TOKENIZERS:
    BY_NAME.setdefault(_entry.name, _entry)
# Names llama.cpp treats exactly like one above (same regexes and flags).
ALIASES = {"llama3": "llama-bpe", "llama-v3": "llama-bpe", "deepseek-r1-qwen": "qwen2",
           "megrez": "qwen2", "refact": "starcoder", "phi-2": "gpt-2", "mpt": "gpt-2",
           "olmo": "gpt-2"}


def _signature(node: Any) -> tuple[Any, ...] | None:
    """What decides the split, without fields that do not (offsets, prefix flags checked apart)."""
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    if kind == "Sequence":
        parts = [_signature(item) for item in node.get("pretokenizers") or []]
        if any(p is None for p in parts):
            return None
        return tuple(p for part in parts for p in part)  # type: ignore[union-attr]
    if kind == "ByteLevel":
        if node.get("add_prefix_space"):
            return None
        return (("ByteLevel", bool(node.get("use_regex", True))),)
    if kind == "Digits":
        return (("Digits", bool(node.get("individual_digits", False))),)
    if kind == "Split":
        pattern = node.get("pattern") or {}
        regex = pattern.get("Regex") if isinstance(pattern, dict) else None
        if regex is None or node.get("invert") or node.get("behavior") != "Isolated":
            return None
        return (("Split", regex),)
    return None


def identify(pre_tokenizer: Any, clean_spaces: bool | None = None) -> PreTokenizer | None:
    """The llama.cpp pre-tokenizer that splits text exactly like `pre_tokenizer`, if any.

    Where two names split alike and differ only in cleaning spaces when decoding, the
    tokenizer's own `clean_up_tokenization_spaces` picks one.
    """
    wanted = _signature(pre_tokenizer)
    if wanted is None:
        return None
    matches = [p for p in PRE_TOKENIZERS if _signature(p.hf) == wanted]
    if not matches:
        return None
    if clean_spaces is not None:
        for match in matches:
            if match.clean_spaces == clean_spaces:
                return match
    return matches[0]


def for_name(name: str | None) -> PreTokenizer | None:
    if not name:
        return None
    return BY_NAME.get(ALIASES.get(name, name))
