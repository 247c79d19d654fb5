"""A causal LM loaded by transformers, with the step-by-step API generation needs."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import numpy as np

from app.core.generate.backends.hf import quiet_transformers
from app.core.generate.placement import Placement


class TokenizerOnly:
    """The tokenizer of an HF model, for checking token agreement before loading weights."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def special_prefix(self) -> list[int]:
        probe = "a"
        plain = self.encode(probe)
        full = list(self.tokenizer(probe, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start]
        return []

    def close(self) -> None:
        self.tokenizer = None


class TransformersModel(TokenizerOnly):
    """A causal LM in transformers with the step-by-step API generation needs."""

    def __init__(self, model: Any, tokenizer: Any, *, backend: str, placement: Placement | None,
                 context_length: int) -> None:
        import torch

        super().__init__(tokenizer)
        self._torch = torch
        self.model = model
        self.backend = backend
        self.placement = placement
        self.context_length = context_length
        self.n_vocab = int(model.get_output_embeddings().weight.shape[0])
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        first = next(model.parameters())
        self.input_device = first.device
        devices = sorted({p.device for p in model.parameters()}, key=str)
        self.device = "+".join(str(d) for d in devices)
        self.placement_text = placement.describe() if placement else f"all on {self.device}"
        self._past: Any = None
        # transformers' own architectures take it; a model shipped as remote code may not.
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        # Chat templates write their special tokens themselves.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_raw_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config,
                       self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return frozenset(ids)

    def text_stream(self) -> _DecodeStream:
        return _DecodeStream(self.tokenizer)

    def _forward(self, ids: list[int], past: Any, use_cache: bool, last_only: bool = False) -> Any:
        torch = self._torch
        tensor = torch.tensor([ids], dtype=torch.long, device=self.input_device)
        extra = {"logits_to_keep": 1} if last_only and self._keeps_logits else {}
        with torch.inference_mode(), quiet_transformers():
            return self.model(input_ids=tensor, past_key_values=past, use_cache=use_cache,
                              **extra)

    def prefill(self, ids: list[int]) -> np.ndarray:
        # The last position's logits only: all of them would be prompt x vocabulary floats
        # (4 GiB for 8k tokens of a 128k vocabulary), as transformers' generate() avoids too.
        out = self._forward(ids, None, True, last_only=True)
        self._past = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()

    def step(self, token: int) -> np.ndarray:
        out = self._forward([token], self._past, True)
        self._past = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()

    def all_logits(self, ids: list[int]) -> np.ndarray:
        out = self._forward(ids, None, False)
        return out.logits[0].float().cpu().numpy()

    def cuda_devices(self) -> tuple[int, ...]:
        return tuple(sorted({p.device.index or 0 for p in self.model.parameters()
                             if p.device.type == "cuda"}))

    def close(self) -> None:
        """Free the weights now: their storage is released even if something still refers to
        the module, so no garbage collection is needed (a collection on a worker thread could
        also finalize the GUI's Qt objects, which must die on the GUI thread)."""
        self._past = None
        if self.model is not None:
            with self._torch.no_grad():
                for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
                    tensor.data = self._torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        self.model = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


class _DecodeStream:
    """Text of generated ids, emitted only once the decoded text is stable (no partial char)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = ""

    def _delta(self, final: bool) -> str:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""
        if not text.startswith(self._emitted):
            return ""  # a decoder rewrote earlier text; keep what was already shown
        delta = text[len(self._emitted):]
        self._emitted = text
        return delta

    def add(self, token: int) -> str:
        self._ids.append(token)
        return self._delta(final=False)

    def finish(self) -> str:
        return self._delta(final=True)
