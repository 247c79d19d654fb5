"""A SentencePiece tokenizer.model becomes the metadata llama.cpp's converter writes, byte for
byte, without importing transformers (tests/data/spm holds the files and llama.cpp's output)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from app.core.convert.spm_vocab import looks_special, read_sentencepiece
from app.core.errors import FormatError

DATA = Path(__file__).resolve().parents[1] / "data" / "spm"
VOCAB_ROWS = 330  # config.json's vocab_size beside llama.cpp's reference: 320 pieces + padding

# Writes the tokenizer metadata of the folder in argv[1] and prints each key/value as packed
# into the file, and whether transformers was imported.
PACK = """
import json, sys
from pathlib import Path
from gguf import GGUFValueType
from app.core.convert import tokenizer
from app.core.convert.metadata import recording_writer
writer = recording_writer("llama")
result = tokenizer.add_tokenizer(writer, Path(sys.argv[1]), int(sys.argv[2]), require=True)
packed = {key: (writer._pack_val(key, GGUFValueType.STRING, False)
                + writer._pack_val(v.value, v.type, True, v.sub_type)).hex()
          for key, v in writer.kv_data[0].items() if key.startswith("tokenizer.")}
print(json.dumps({"packed": packed, "transformers": "transformers" in sys.modules,
                  "loads_transformers": result.loads_transformers}))
"""


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "spm"
    shutil.copytree(DATA, folder)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": VOCAB_ROWS, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0}))
    return folder


def test_metadata_is_llama_cpp_s_without_transformers(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    done = subprocess.run([sys.executable, "-c", PACK, str(folder), str(VOCAB_ROWS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours["transformers"] is False and ours["loads_transformers"] is False
    reference = gguf.GGUFReader(DATA / "llama-cpp-vocab.gguf")
    expected = {key: b"".join(bytes(part) for part in field.parts).hex()
                for key, field in reference.fields.items() if key.startswith("tokenizer.")}
    assert list(ours["packed"]) == list(expected)  # same keys, same order
    for key, value in expected.items():
        assert ours["packed"][key] == value, key


def test_added_tokens_padding_and_types(tmp_path: Path) -> None:
    vocab = read_sentencepiece(_folder(tmp_path), VOCAB_ROWS)
    assert vocab.n_pieces == 320 and len(vocab.tokens) == VOCAB_ROWS
    assert vocab.tokens[325] == b"[PAD325]" and vocab.scores[325] == -10000.0
    assert vocab.types[325] == gguf.TokenType.UNUSED
    assert vocab.types[320] == gguf.TokenType.CONTROL  # not marked special, looks special
    assert vocab.types[321] == gguf.TokenType.USER_DEFINED  # added_tokens.json
    assert vocab.tokens[322] == b" two words"  # ▁ pre-normalised in user-defined tokens
    assert vocab.types[323] == gguf.TokenType.CONTROL  # <mask>
    assert vocab.types[0] == gguf.TokenType.CONTROL and vocab.scores[0] == -1000.0
    assert looks_special("<|im_start|>") and not looks_special("<b>")


def test_fewer_rows_than_pieces_leave_the_rest_out(tmp_path: Path) -> None:
    vocab = read_sentencepiece(_folder(tmp_path), 300)
    assert len(vocab.tokens) == 300 and vocab.ignored[:2] == [300, 301]


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"<x>": "seven"}))
    with pytest.raises(FormatError, match="seven") as error:
        read_sentencepiece(folder, VOCAB_ROWS)
    assert error.value.path == folder / "added_tokens.json"
    (folder / "added_tokens.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(FormatError) as error:
        read_sentencepiece(folder, VOCAB_ROWS)
    assert error.value.path == folder / "tokenizer.model"
