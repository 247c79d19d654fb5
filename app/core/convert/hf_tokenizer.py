"""A GGUF's tokenizer as a Hugging Face `tokenizer.json` that transformers loads.

gpt2 (byte-level BPE): the vocabulary and merges as stored, the pre-tokenizer llama.cpp names
in `tokenizer.ggml.pre` (pretokenizers.py), control tokens as special added tokens.
llama (SentencePiece): a byte-fallback BPE whose merges are recovered from the scores, as
transformers' own GGUF loader does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import TokenType

from app.core.convert import pretokenizers
from app.core.errors import FormatError
from app.core.formats.gguf_header import read_gguf_header

ARRAYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.scores"})


def read_tokenizer_fields(path: Path) -> dict[str, Any]:
    fields = read_gguf_header(path, load_arrays=ARRAYS).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise FormatError("the GGUF has no token list", path=path)
    return {k: v for k, v in fields.items() if k.startswith("tokenizer.")}


def _added_tokens(tokens: list[str], types: list[int]) -> list[dict[str, Any]]:
    added = []
    for index, (token, kind) in enumerate(zip(tokens, types, strict=False)):
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED):
            added.append({"id": index, "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False,
                          "special": kind == TokenType.CONTROL})
    return added


def _post_processor(fields: dict[str, Any], tokens: list[str], default_bos: bool
                    ) -> dict[str, Any] | None:
    bos = fields.get("tokenizer.ggml.bos_token_id")
    add_bos = fields.get("tokenizer.ggml.add_bos_token", default_bos)
    if not add_bos or not isinstance(bos, int) or not 0 <= bos < len(tokens):
        return None
    token = tokens[bos]
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": token, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": token, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": token, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {token: {"id": token, "ids": [bos], "tokens": [token]}}}


def bpe_tokenizer_json(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """tokenizer.json for a gpt2 GGUF tokenizer, and notes for the log."""
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = fields.get("tokenizer.ggml.merges") or []
    notes = []
    name = fields.get("tokenizer.ggml.pre")
    pre = pretokenizers.for_name(name)
    if pre is None:
        pre = pretokenizers.BY_NAME["gpt-2"]
        notes.append(f"pre-tokenizer {name!r} has no Hugging Face equivalent known to Modelyard; "
                     "used GPT-2's, so tokenization may differ")
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise FormatError("the GGUF token list holds duplicate tokens")
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(tokens, types),
        "normalizer": None,
        "pre_tokenizer": pre.hf,
        "post_processor": _post_processor(fields, tokens, False) or
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
         "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": pre.ignore_merges,
                  "vocab": vocab, "merges": [m.split(" ", 1) for m in merges]},
    }
    notes.append(f"pre-tokenizer {pre.name!r} written as its Hugging Face equivalent")
    return data, notes


def spm_tokenizer_json(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """tokenizer.json for a llama (SentencePiece) GGUF tokenizer."""
    from transformers.tokenization_utils_base import generate_merges

    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    scores: list[float] = fields.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    normal = {t: s for t, s, k in zip(tokens, scores, types, strict=False) if k == TokenType.NORMAL}
    merges = generate_merges(vocab, normal)
    unk_id = fields.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(tokens) else None
    prefix = fields.get("tokenizer.ggml.add_space_prefix", True)
    steps: list[dict[str, Any]] = [{"type": "Replace", "pattern": {"String": " "},
                                    "content": "\u2581"}]
    if prefix:
        steps.insert(0, {"type": "Prepend", "prepend": "\u2581"})
    decoder_steps: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]
    if prefix:
        decoder_steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(tokens, [
            TokenType.CONTROL if k in (TokenType.CONTROL, TokenType.UNKNOWN) else k
            for k in types]),
        "normalizer": {"type": "Sequence", "normalizers": steps},
        "pre_tokenizer": None,
        "post_processor": _post_processor(fields, tokens, True),
        "decoder": {"type": "Sequence", "decoders": decoder_steps},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [list(m) for m in merges]},
    }
    return data, ["SentencePiece vocabulary written as a byte-fallback BPE tokenizer.json"]


def build_tokenizer(gguf_path: Path) -> tuple[Any, dict[str, Any], list[str], bool]:
    """(tokenizers.Tokenizer, the GGUF's tokenizer fields, notes, clean_up_spaces); raises
    FormatError when the GGUF's vocabulary cannot make a tokenizer."""
    from tokenizers import Tokenizer

    fields = read_tokenizer_fields(gguf_path)
    if fields.get("tokenizer.ggml.model") == "gpt2":
        data, notes = bpe_tokenizer_json(fields)
        pre = pretokenizers.for_name(fields.get("tokenizer.ggml.pre"))
        clean = pre.clean_spaces if pre is not None else True
    else:
        data, notes = spm_tokenizer_json(fields)
        clean = False
    try:
        backend = Tokenizer.from_str(json.dumps(data))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise FormatError(f"its tokenizer is inconsistent ({exc})", path=gguf_path) from None
    return backend, fields, notes, clean


def save_tokenizer(folder: Path, gguf_path: Path) -> list[str]:
    """Write tokenizer.json, tokenizer_config.json (and the chat template) into `folder`."""
    from transformers import PreTrainedTokenizerFast

    backend, fields, notes, clean = build_tokenizer(gguf_path)
    tokens: list[str] = fields["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = fields.get(f"tokenizer.ggml.{key}")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"), unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"), clean_up_tokenization_spaces=clean)
    template = fields.get("tokenizer.chat_template")
    if isinstance(template, str):
        fast.chat_template = template
        notes.append("chat template copied")
    fast.save_pretrained(folder)
    return notes
