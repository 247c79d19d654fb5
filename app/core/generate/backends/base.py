"""What every backend offers: tokenize, prefill, one decoding step, logits for a window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

BackendName = Literal["llama.cpp", "transformers"]
BackendChoiceName = Literal["auto", "llama.cpp", "transformers"]
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model; the same for test generation and comparison."""

    backend: BackendChoiceName = "auto"
    dtype: DTypeName = "auto"
    trust_remote_code: bool = False
    use_gpu: bool = True
    n_gpu_layers: int | None = None  # llama.cpp; None: from the fit estimate
    context_tokens: int | None = None  # None: the model's own, capped for a test
    logits_for_all_positions: bool = False  # comparison needs every position's logits


class TextStream(Protocol):
    """Turns generated token ids into text as it becomes complete (whole UTF-8 characters)."""

    def add(self, token: int) -> str: ...

    def finish(self) -> str: ...


class TokenizerView(Protocol):
    """Enough of a tokenizer to check that two models read a text the same way."""

    def encode(self, text: str) -> list[int]: ...

    def special_prefix(self) -> list[int]: ...

    def close(self) -> None: ...


class LoadedModel(TokenizerView, Protocol):
    backend: str  # what ran, in words: "llama.cpp", "transformers", "transformers (GGUF)"
    device: str  # "cpu", "cuda:0", "cuda:0+cpu"
    context_length: int
    n_vocab: int
    chat_template: str | None
    placement_text: str

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def encode_raw_prompt(self, text: str) -> list[int]: ...

    def eos_ids(self) -> frozenset[int]: ...

    def text_stream(self) -> TextStream: ...

    def prefill(self, ids: list[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...

    def all_logits(self, ids: list[int]) -> np.ndarray: ...

    def cuda_devices(self) -> tuple[int, ...]: ...


class Utf8Stream:
    """Text of byte pieces (llama.cpp pieces may split a character across tokens)."""

    def __init__(self, piece: object) -> None:
        import codecs

        self._piece = piece
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self._decoder.decode(self._piece(token))  # type: ignore[operator]

    def finish(self) -> str:
        return self._decoder.decode(b"", final=True)
