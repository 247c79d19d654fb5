"""The test-generation job: load a model, apply its chat template, stream the reply."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from app.core.errors import OptionError
from app.core.formats.scan import inspect_path
from app.core.generate.backends.base import (
    BackendChoiceName,
    DTypeName,
    LoadedModel,
    LoadOptions,
)
from app.core.generate.chat import chat_messages
from app.core.generate.loader import choose_backend, open_model
from app.core.generate.memory import PeakMemory
from app.core.generate.sampling import Sampler
from app.core.jobs import ProgressUnit, Reporter, check_cancel

StopReason = Literal["eos", "max_tokens", "context_full"]
PromptFormat = Literal["chat template", "raw"]


@dataclass(frozen=True)
class GenerateResult:
    text: str
    token_ids: tuple[int, ...]
    n_prompt_tokens: int
    n_generated: int
    prompt_tokens_per_s: float
    tokens_per_s: float
    load_s: float
    peak_bytes: int  # highest RSS of the process during the job
    peak_vram_bytes: int | None  # CUDA allocations by torch; None when no CUDA was used
    backend: str
    backend_reason: str
    device: str
    placement: str
    prompt_format: PromptFormat
    stop_reason: StopReason
    seed: int | None  # the seed used when sampling (None: greedy)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["token_ids"] = list(self.token_ids)
        return data


@dataclass(frozen=True)
class GenerateRequest:
    """Job: a short generation that proves a model loads and talks.

    `on_text` receives the reply piece by piece as it is generated (whole characters); the
    GUI passes a function that emits a signal, the CLI one that prints.
    """

    path: Path
    prompt: str
    max_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # None with sampling: a random seed, reported in the result
    system: str | None = None
    use_chat_template: bool = True
    backend: BackendChoiceName = "auto"
    dtype: DTypeName = "auto"
    trust_remote_code: bool = False
    use_gpu: bool = True
    n_gpu_layers: int | None = None
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    progress_unit: ProgressUnit = "tokens"
    # Loads torch or a native runtime and a whole model: a crash must not take the caller.
    runs_in_child_process: ClassVar[bool] = True

    @property
    def title(self) -> str:
        return f"Test generation with {Path(self.path).name}"

    def check_options(self) -> None:
        if not self.prompt.strip():
            raise OptionError("the prompt is empty")
        if self.max_tokens < 1:
            raise OptionError(f"max tokens must be at least 1, not {self.max_tokens}")
        if self.temperature < 0:
            raise OptionError(f"temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise OptionError(f"top-p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise OptionError(f"top-k must be 0 (off) or more, not {self.top_k}")

    def load_options(self) -> LoadOptions:
        return LoadOptions(backend=self.backend, dtype=self.dtype,
                           trust_remote_code=self.trust_remote_code, use_gpu=self.use_gpu,
                           n_gpu_layers=self.n_gpu_layers)

    def run(self, reporter: Reporter) -> GenerateResult:
        self.check_options()
        info = inspect_path(self.path)
        choice = choose_backend(info, self.backend)
        reporter.log("info", f"backend: {choice.name} ({choice.reason})")
        seed = None
        if self.temperature > 0:
            seed = self.seed if self.seed is not None else secrets.randbits(32)
        sampler = Sampler(self.temperature, self.top_k, self.top_p, seed or 0)
        with PeakMemory() as memory:
            start = time.monotonic()
            reporter.progress(0, self.max_tokens, f"loading {info.name}")
            model = open_model(info, choice, self.load_options())
            try:
                load_s = time.monotonic() - start
                memory.use_cuda_devices(model.cuda_devices())
                reporter.log("info", f"loaded in {load_s:.1f} s with {model.backend} on "
                                     f"{model.device}: {model.placement_text}")
                check_cancel(reporter)
                prompt_ids, prompt_format = self._prompt_ids(model, reporter)
                output = generate_tokens(model, prompt_ids, sampler, self.max_tokens,
                                         reporter, self.on_text)
            finally:
                model.close()
        result = GenerateResult(
            text=output.text, token_ids=tuple(output.token_ids),
            n_prompt_tokens=len(prompt_ids), n_generated=len(output.token_ids),
            prompt_tokens_per_s=output.prompt_tokens_per_s, tokens_per_s=output.tokens_per_s,
            load_s=load_s, peak_bytes=memory.peak_rss, peak_vram_bytes=memory.peak_vram,
            backend=model.backend, backend_reason=choice.reason, device=model.device,
            placement=model.placement_text, prompt_format=prompt_format,
            stop_reason=output.stop_reason, seed=seed)
        reporter.log("info", f"{result.n_generated} tokens at {result.tokens_per_s:.1f} "
                             f"tokens/s (prompt {result.prompt_tokens_per_s:.1f} tokens/s), "
                             f"stopped by {result.stop_reason.replace('_', ' ')}")
        return result

    def _prompt_ids(self, model: LoadedModel, reporter: Reporter) -> tuple[list[int],
                                                                           PromptFormat]:
        if self.use_chat_template and model.chat_template:
            return model.encode_chat(chat_messages(self.prompt, self.system)), "chat template"
        if self.use_chat_template:
            reporter.log("info", "the model has no chat template: the prompt is used as "
                                 "written")
        return model.encode_raw_prompt(self.prompt), "raw"


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    stop_reason: StopReason
    prompt_tokens_per_s: float
    tokens_per_s: float


def generate_tokens(model: LoadedModel, prompt_ids: list[int], sampler: Sampler,
                    max_tokens: int, reporter: Reporter,
                    on_text: Callable[[str], None] | None = None) -> GenerationOutput:
    """Prefill the prompt, then one token per step until EOS, `max_tokens` or a full context.

    Cancel is checked before every step, so a cancel stops the job within one token.
    """
    room = model.context_length - len(prompt_ids)
    if room <= 0:
        raise OptionError(f"the prompt has {len(prompt_ids)} tokens but the context holds "
                          f"{model.context_length}", hint="shorten the prompt")
    limit = min(max_tokens, room)
    eos = model.eos_ids()
    stream = model.text_stream()
    pieces: list[str] = []

    def emit(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    check_cancel(reporter)
    start = time.monotonic()
    logits = model.prefill(prompt_ids)
    prefill_s = time.monotonic() - start
    tokens: list[int] = []
    decode_s = 0.0
    steps = 0
    stop: StopReason = "max_tokens" if limit == max_tokens else "context_full"
    while True:
        check_cancel(reporter)
        token = sampler.pick(logits)
        if token in eos:
            stop = "eos"
            break
        tokens.append(token)
        emit(stream.add(token))
        rate = steps / decode_s if decode_s > 0 else 0.0
        reporter.progress(len(tokens), max_tokens, f"{rate:.1f} tokens/s")
        if len(tokens) >= limit:
            break
        check_cancel(reporter)
        start = time.monotonic()
        logits = model.step(token)
        decode_s += time.monotonic() - start
        steps += 1
    emit(stream.finish())
    return GenerationOutput(
        text="".join(pieces), token_ids=tokens, stop_reason=stop,
        prompt_tokens_per_s=len(prompt_ids) / prefill_s if prefill_s > 0 else 0.0,
        tokens_per_s=steps / decode_s if decode_s > 0 else 0.0)
