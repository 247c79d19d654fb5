"""A Hugging Face tokenizer as GGUF metadata, through gguf-py's vocabulary classes.

Order as llama.cpp's converter (LlamaModel.set_vocab): SentencePiece `tokenizer.model` →
`tokenizer.ggml.model = llama` with scores, read as that converter reads it (spm_vocab.py, no
transformers); a byte-fallback BPE `tokenizer.json` (Llama 2 style
in HF form) → llama via `LlamaHfVocab`; a byte-level BPE `tokenizer.json` or vocab.json +
merges.txt → gpt2 with merges and a pre-tokenizer name (see pretokenizers.py). Special token ids,
add_bos/add_eos and the chat template come from `gguf.SpecialVocab`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import GGUFWriter, TokenType

from app.core.convert import pretokenizers
from app.core.errors import BadInputError, FormatError, OptionFact, UnsupportedError


@dataclass
class TokenizerResult:
    kind: str  # "gpt2", "llama" or "none"
    n_tokens: int = 0
    notes: list[str] = field(default_factory=list)  # decisions, for the job's log
    warnings: list[str] = field(default_factory=list)
    loads_transformers: bool = False  # the tokenizer had to be loaded through transformers


def load_tokenizer_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"unreadable tokenizer file ({exc})", path=path) from None
    if not isinstance(data, dict):
        raise FormatError("is not a JSON object", path=path)
    return data


def _sentencepiece_available() -> bool:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        return False
    return True


def add_tokenizer(writer: GGUFWriter, folder: Path, vocab_size: int,
                  require: bool) -> TokenizerResult:
    """Write the tokenizer of the HF model in `folder` into `writer`'s metadata."""
    tokenizer_json = folder / "tokenizer.json"
    spm_model = folder / "tokenizer.model"
    data = load_tokenizer_json(tokenizer_json) if tokenizer_json.is_file() else None
    model = (data or {}).get("model") or {}
    if spm_model.is_file() and _sentencepiece_available():
        return _add_sentencepiece(writer, folder, vocab_size)
    if data is not None and model.get("type") == "BPE" and model.get("byte_fallback"):
        return _add_llama_hf(writer, folder, vocab_size)
    if data is not None or (folder / "vocab.json").is_file():
        return _add_bpe(writer, folder, data, vocab_size)
    if spm_model.is_file():
        reason = "tokenizer.model needs the sentencepiece package (pip install sentencepiece)"
    else:
        reason = "no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt)"
    if require:
        raise BadInputError(reason, path=folder,
                            hint="add the tokenizer files, or convert without requiring one",
                            option=OptionFact("require_tokenizer", False))
    result = TokenizerResult("none")
    result.warnings.append(f"{reason}: the GGUF has no tokenizer, so runtimes cannot use it "
                           "for text until one is added")
    return result


def _pad(tokens: list[Any], types: list[int], scores: list[float] | None, vocab_size: int,
         folder: Path) -> int:
    if len(tokens) > vocab_size:
        raise UnsupportedError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary "
                               f"(vocab_size) has {vocab_size} rows", path=folder)
    missing = vocab_size - len(tokens)
    for index in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{index}]")
        types.append(TokenType.UNUSED)
        if scores is not None:
            scores.append(-1000.0)
    return missing


def _add_bpe(writer: GGUFWriter, folder: Path, data: dict[str, Any] | None,
             vocab_size: int) -> TokenizerResult:
    try:
        vocab = gguf.BpeVocab(folder)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise UnsupportedError(f"unsupported tokenizer ({exc})", path=folder) from None
    tokens: list[Any] = []
    types: list[int] = []
    for text, _score, token_type in vocab.all_tokens():
        tokens.append(text)
        types.append(int(token_type))
    # BpeVocab marks every token of the base vocabulary NORMAL; added tokens that are also in it
    # (special tokens trained into the vocabulary) must be CONTROL, or llama.cpp splits them.
    for added in (data or {}).get("added_tokens") or []:
        index = added.get("id")
        if isinstance(index, int) and 0 <= index < len(types):
            types[index] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    result = TokenizerResult("gpt2", vocab_size)
    padded = _pad(tokens, types, None, vocab_size, folder)
    if padded:
        result.notes.append(f"vocabulary padded with {padded} unused token(s) to {vocab_size}")
    loaded = _load_hf_tokenizer(folder, result)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_name(data, folder, loaded, result))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    _add_special_flags(special, loaded)
    special.add_to_gguf(writer, quiet=True)
    result.notes.append(f"tokenizer: gpt2 BPE, {vocab.vocab_size} tokens")
    return result


# tokenizer_config.json classes that use tokenizer.json exactly as it is written.
GENERIC_TOKENIZER_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
# Model types whose transformers tokenizer class replaces a generic declaration with its own
# (transformers 5's MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS among the architectures the
# converter supports); Qwen2Tokenizer installs Qwen2's split regex whatever the file says.
OWN_TOKENIZER_TYPES = frozenset({"qwen2"})


class FileTokenizer:
    """tokenizer.json read by the `tokenizers` library, with the few attributes of a
    transformers tokenizer that the conversion asks for; loads in milliseconds where importing
    transformers takes seconds."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        special_map = folder / "special_tokens_map.json"
        specials = load_tokenizer_json(special_map) if special_map.is_file() else {}
        self.bos_token_id = self._token_id(config.get("bos_token", specials.get("bos_token")))
        self.eos_token_id = self._token_id(config.get("eos_token", specials.get("eos_token")))
        clean = config.get("clean_up_tokenization_spaces")
        # transformers 5 leaves the clean-up off unless the config turns it on.
        self.clean_up_tokenization_spaces = clean if isinstance(clean, bool) else False

    def _token_id(self, token: Any) -> int | None:
        text = token.get("content") if isinstance(token, dict) else token
        return self.backend_tokenizer.token_to_id(text) if isinstance(text, str) else None

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text).ids}


def _file_tokenizer(folder: Path) -> FileTokenizer | None:
    """The fast reading where transformers would use tokenizer.json as written: a generic
    tokenizer class, no class of the model type's own, no remote code, no Mistral tekken."""
    config_path, model_config = folder / "tokenizer_config.json", folder / "config.json"
    if not (folder / "tokenizer.json").is_file() or not config_path.is_file() \
            or (folder / "tekken.json").exists():
        return None
    config = load_tokenizer_json(config_path)
    model_type = (load_tokenizer_json(model_config).get("model_type") if model_config.is_file()
                  else None)
    if config.get("tokenizer_class") not in GENERIC_TOKENIZER_CLASSES or "auto_map" in config \
            or model_type in OWN_TOKENIZER_TYPES:
        return None
    try:
        return FileTokenizer(folder, config)
    except Exception:  # noqa: BLE001 - what tokenizers cannot read, transformers is asked
        return None


def _load_hf_tokenizer(folder: Path, result: TokenizerResult) -> Any | None:
    fast = _file_tokenizer(folder)
    if fast is not None:
        return fast
    result.loads_transformers = True
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                             trust_remote_code=False)
    except Exception:  # noqa: BLE001 - any failure means: judge by the files alone
        return None


def _add_special_flags(special: gguf.SpecialVocab, loaded: Any | None) -> None:
    """Where the files do not say whether BOS/EOS are added, ask the tokenizer itself."""
    if loaded is None:
        return
    try:
        ids = loaded("a")["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode leaves the flags unset
        return
    for kind, index in (("bos", 0), ("eos", -1)):
        token_id = getattr(loaded, f"{kind}_token_id", None)
        if kind not in special.add_special_token and ids:
            special.add_special_token[kind] = token_id is not None and ids[index] == token_id


def _loaded_pre_tokenizer(loaded: Any | None) -> tuple[Any, bool | None] | None:
    """The pre-tokenizer transformers really uses for this model, and its space clean-up.

    Some tokenizer classes replace the pre-tokenizer of tokenizer.json (transformers 5's
    Qwen2Tokenizer installs Qwen2's split regex whatever the file says), so the file alone can
    mislead; the loaded tokenizer is what "tokenizes like transformers" means.
    """
    if loaded is None:
        return None
    try:
        backend = json.loads(loaded.backend_tokenizer.to_str())
    except Exception:  # noqa: BLE001 - a slow tokenizer: judge by tokenizer.json alone
        return None
    clean = getattr(loaded, "clean_up_tokenization_spaces", None)
    return backend.get("pre_tokenizer"), clean if isinstance(clean, bool) else None


def _pre_name(data: dict[str, Any] | None, folder: Path, loaded: Any | None,
              result: TokenizerResult) -> str:
    if data is None:  # vocab.json + merges.txt: the slow GPT-2 tokenizer and its regex
        result.notes.append("pre-tokenizer gpt-2 (vocab.json + merges.txt)")
        return "gpt-2"
    found_loaded = _loaded_pre_tokenizer(loaded)
    if found_loaded is not None:
        pre_tokenizer, clean = found_loaded
        where = "the tokenizer transformers loads"
    else:
        config_path = folder / "tokenizer_config.json"
        raw = load_tokenizer_json(config_path).get("clean_up_tokenization_spaces") \
            if config_path.is_file() else None
        pre_tokenizer, clean = data.get("pre_tokenizer"), raw if isinstance(raw, bool) else None
        where = "tokenizer.json"
    found = pretokenizers.identify(pre_tokenizer, clean)
    if found is None:
        result.warnings.append(
            f"the pre-tokenizer of {where} matches none llama.cpp knows; wrote 'default', so "
            "llama.cpp may split text differently from transformers")
        return "default"
    result.notes.append(f"pre-tokenizer {found.name!r}: {where} splits text with the same "
                        "regexes llama.cpp uses for that name")
    return found.name


def _add_sentencepiece(writer: GGUFWriter, folder: Path, vocab_size: int) -> TokenizerResult:
    """As llama.cpp's converter (`_set_vocab_sentencepiece`): the vocabulary and the special
    tokens the files declare, read without transformers."""
    from app.core.convert.spm_vocab import read_sentencepiece

    vocab = read_sentencepiece(folder, vocab_size)
    result = TokenizerResult("llama", len(vocab.tokens))
    if vocab.ignored:
        result.warnings.append(f"{len(vocab.ignored)} token id(s) past the model's "
                               f"{len(vocab.tokens)} vocabulary rows left out "
                               f"(first: {vocab.ignored[0]})")
    padded = len(vocab.tokens) - vocab.n_pieces
    if padded > 0:
        result.notes.append(f"vocabulary of {vocab.n_pieces} pieces padded to "
                            f"{len(vocab.tokens)} rows")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(folder, n_vocab=len(vocab.tokens)).add_to_gguf(writer, quiet=True)
    result.notes.append(f"tokenizer: llama SentencePiece from tokenizer.model, "
                        f"{vocab.n_pieces} pieces")
    return result


def _add_llama_hf(writer: GGUFWriter, folder: Path, vocab_size: int) -> TokenizerResult:
    try:
        vocab = gguf.LlamaHfVocab(folder)
    except (FileNotFoundError, TypeError, ValueError) as exc:
        raise UnsupportedError(f"unsupported tokenizer ({exc})", path=folder) from None
    return _add_llama(writer, folder, vocab, vocab_size, "byte-fallback BPE tokenizer.json")


def _add_llama(writer: GGUFWriter, folder: Path, vocab: Any, vocab_size: int,
               source: str) -> TokenizerResult:
    tokens: list[Any] = []
    scores: list[float] = []
    types: list[int] = []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(token_type))
    result = TokenizerResult("llama", vocab_size)
    padded = _pad(tokens, types, scores, vocab_size, folder)
    if padded:
        result.notes.append(f"vocabulary padded with {padded} unused token(s) to {vocab_size}")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    _add_special_flags(special, _load_hf_tokenizer(folder, result))
    special.add_to_gguf(writer, quiet=True)
    result.notes.append(f"tokenizer: llama SentencePiece from the {source}, "
                        f"{vocab.vocab_size} tokens")
    return result
