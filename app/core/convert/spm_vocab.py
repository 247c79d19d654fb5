"""A SentencePiece `tokenizer.model` as llama.cpp's converter reads it
(`TextModel._create_vocab_sentencepiece` in convert_hf_to_gguf.py), with the `sentencepiece`
package alone: no transformers.

The model's vocabulary rows (`vocab_size` of config.json) are the token ids: every id starts as
an unused `[PAD{id}]` scored -10000, the SentencePiece pieces fill their ids, then
`added_tokens.json` and the `added_tokens_decoder` of tokenizer_config.json override theirs, as
llama.cpp does (so runtimes see the same vocabulary from either converter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import TokenType

from app.core.convert.tokenizer import load_tokenizer_json
from app.core.errors import FormatError

# Added tokens that models mark "not special" although they are control tokens
# (llama.cpp's TextModel.does_token_look_special).
_SPECIAL_LOOKING = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
_SPACE_MARK = "\u2581"  # SentencePiece's "▁"


@dataclass
class SentencePieceVocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    n_pieces: int  # pieces in tokenizer.model
    ignored: list[int]  # token ids past the model's vocabulary, left out as llama.cpp does


def looks_special(token: str) -> bool:
    return (token in _SPECIAL_LOOKING
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # deepseek-coder
            or (token.startswith("<unused") and token.endswith(">")))


def _piece_type(processor: Any, token_id: int) -> int:
    if processor.IsUnknown(token_id):
        return TokenType.UNKNOWN
    if processor.IsControl(token_id):
        return TokenType.CONTROL
    if processor.IsUnused(token_id):
        return TokenType.UNUSED
    if processor.IsByte(token_id):
        return TokenType.BYTE
    return TokenType.NORMAL


def read_sentencepiece(folder: Path, vocab_size: int | None) -> SentencePieceVocab:
    """The vocabulary of `folder/tokenizer.model`, `vocab_size` rows (None: the model's)."""
    from sentencepiece import SentencePieceProcessor

    model = folder / "tokenizer.model"
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(model))
    except (OSError, RuntimeError) as exc:
        raise FormatError(f"not a SentencePiece model ({exc})", path=model) from None
    n_pieces = processor.vocab_size()
    size = vocab_size or n_pieces
    vocab = SentencePieceVocab([f"[PAD{i}]".encode() for i in range(size)], [-10000.0] * size,
                               [TokenType.UNUSED] * size, n_pieces, [])
    for token_id in range(min(n_pieces, size)):
        vocab.tokens[token_id] = processor.IdToPiece(token_id).encode("utf-8")
        vocab.scores[token_id] = processor.GetScore(token_id)
        vocab.types[token_id] = _piece_type(processor, token_id)
    if n_pieces > size:
        vocab.ignored.extend(range(size, n_pieces))

    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        added = load_tokenizer_json(added_file)
        for text, token_id in added.items():
            if not _in_range(token_id, size, vocab, added_file):
                continue
            vocab.tokens[token_id] = text.encode("utf-8")
            vocab.scores[token_id] = -1000.0
            vocab.types[token_id] = TokenType.USER_DEFINED

    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = load_tokenizer_json(config_file)
        decoder = config.get("added_tokens_decoder", {})
        for key, data in (decoder or {}).items():
            token_id = int(key) if str(key).isdigit() else -1
            text = data.get("content") if isinstance(data, dict) else None
            if not isinstance(text, str) or not _in_range(token_id, size, vocab, config_file):
                continue
            if data.get("special") or looks_special(text):
                vocab.types[token_id] = TokenType.CONTROL
            else:
                text = text.replace(_SPACE_MARK, " ")  # user-defined spaces, pre-normalised
                vocab.types[token_id] = TokenType.USER_DEFINED
            vocab.scores[token_id] = -1000.0
            vocab.tokens[token_id] = text.encode("utf-8")
    return vocab


def _in_range(token_id: Any, size: int, vocab: SentencePieceVocab, path: Path) -> bool:
    if not isinstance(token_id, int) or token_id < 0:
        raise FormatError(f"token id {token_id!r} is not a non-negative integer", path=path)
    if token_id >= size:
        vocab.ignored.append(token_id)
        return False
    return True
