"""The llama.cpp backend, through llama-cpp-python (an optional extra: `pip install .[llama]`).

llama.cpp reports why a load failed only in its log, so loads run with the log captured and
the reason ("unknown model architecture", "missing tensor ...") becomes the error's text.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from app.core.cuda import cuda_oom_error, is_cuda_oom
from app.core.errors import FormatError, JobError, ModelyardError, OptionFact, UnsupportedError
from app.core.generate.backends.base import Utf8Stream
from app.core.generate.chat import render_chat_template

INSTALL_HINT = "install it with: pip install 'llama-cpp-python>=0.3.30' (or modelyard[llama])"
LOAD_ERROR = re.compile(r"error loading model(?: architecture)?: (?P<reason>.+)")
UNKNOWN_ARCH = re.compile(r"unknown model architecture: '(?P<arch>[^']*)'")
MISSING_TENSOR = re.compile(r"missing tensor '(?P<tensor>[^']+)'|"
                            r"tensor '(?P<absent>[^']+)' not found")
DEFAULT_TEST_CONTEXT = 4096


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def llama_cpp_version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "unknown"))


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class _LogCapture:
    lines: list[str]

    def __init__(self) -> None:
        self.lines = []

    def text(self) -> str:
        return "".join(self.lines)

    def load_error(self) -> str | None:
        for line in self.lines:
            match = LOAD_ERROR.search(line)
            if match:
                return match["reason"].strip()
        return None


@contextmanager
def captured_llama_log() -> Iterator[_LogCapture]:
    """Route llama.cpp's log into a list while loading; restore the package's handler after."""
    import llama_cpp
    from llama_cpp import _logger

    capture = _LogCapture()

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        capture.lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        yield capture
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


class UnknownArchitectureError(UnsupportedError):
    """llama.cpp does not know the GGUF's `general.architecture`."""

    def __init__(self, reason: str, *, architecture: str, path: Path, hint: str,
                 option: OptionFact | None = None) -> None:
        self.architecture = architecture
        super().__init__(reason, path=path, hint=hint, option=option)


def load_error(path: Path, reason: str | None) -> ModelyardError:
    """One sentence with the action to take, from llama.cpp's own reason."""
    version = llama_cpp_version()
    if reason is not None and is_cuda_oom(RuntimeError(reason)):
        return cuda_oom_error(reason, f"loading {path.name}")
    if reason is None:
        return JobError(f"llama.cpp (llama-cpp-python {version}) could not load the model and "
                        "gave no reason", path=path, hint="run `modelyard doctor` on it")
    arch = UNKNOWN_ARCH.search(reason)
    if arch:
        return UnknownArchitectureError(
            f"the llama.cpp in llama-cpp-python {version} does not know the architecture "
            f"{arch['arch']!r}", architecture=arch["arch"], path=path,
            hint="upgrade llama-cpp-python (pip install -U llama-cpp-python), or run it in "
                 "transformers if transformers supports this architecture",
            option=OptionFact("backend", "transformers"))
    missing = MISSING_TENSOR.search(reason)
    if missing:
        return FormatError(
            f"tensor {missing['tensor'] or missing['absent']!r}, which the architecture needs, "
            "is not in the file; "
            "a merge or conversion dropped it", path=path,
            hint="run `modelyard doctor` to list every missing tensor, and rebuild the file "
                 "from its source")
    if "wrong shape" in reason or "wrong number of tensors" in reason:
        return FormatError(f"llama.cpp rejected the file: {reason}", path=path,
                           hint="the file does not match its own header; rebuild it")
    return JobError(f"llama.cpp could not load the model: {reason}", path=path,
                    hint="run `modelyard doctor` on it")


def cpu_has_amx() -> bool:
    """Whether the CPU reports Intel AMX tiles (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return any(line.startswith("flags") and " amx_tile" in line for line in info)
    except OSError:
        return False


_PARAMS_LOCK = threading.Lock()


@contextmanager
def _without_extra_buffer_types() -> Iterator[None]:
    """Models loaded inside get `use_extra_bufts = False`.

    llama.cpp built for a CPU with AMX repacks weights into its AMX buffer type, and that path
    crashes the process (SIGSEGV) on quantized models whose rows are short (seen with Q8_0 and
    Q4_0 tensors of 64 columns, llama-cpp-python 0.3.36); without the extra buffer types the
    same model runs correctly on the plain CPU kernels. `Llama()` takes no parameter for it, so
    the default parameters it starts from are adjusted while it loads.
    """
    import llama_cpp.llama_cpp as bindings

    with _PARAMS_LOCK:
        default_params = bindings.llama_model_default_params

        def params_without_extra_buffer_types() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = params_without_extra_buffer_types
        try:
            yield
        finally:
            bindings.llama_model_default_params = default_params


def open_llama(path: Path, **kwargs: Any) -> Any:
    """`llama_cpp.Llama(path, **kwargs)` with llama.cpp's reason in the error when it fails.

    On CPUs with AMX the extra (repacking) buffer types are off: see
    `_without_extra_buffer_types`.
    """
    if not llama_cpp_available():
        raise UnsupportedError("llama-cpp-python is not installed", hint=INSTALL_HINT)
    import llama_cpp

    safe_buffers = _without_extra_buffer_types() if cpu_has_amx() else nullcontext()
    with captured_llama_log() as log, safe_buffers:
        try:
            return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
        except (ValueError, RuntimeError) as exc:
            reason = log.load_error()
            if reason is None and "Failed to load" not in str(exc):
                reason = str(exc)
            raise load_error(path, reason) from None


def unknown_architecture(path: Path) -> str | None:
    """The architecture name if this llama.cpp does not know it (a vocabulary-only load).

    None when llama.cpp knows it; other problems of the file are other checks' business.
    """
    try:
        llm = open_llama(path, vocab_only=True)
    except UnknownArchitectureError as exc:
        return exc.architecture
    except ModelyardError:
        return None
    llm.close()
    return None


class LlamaCppModel:
    """A GGUF model loaded in llama.cpp, with the step-by-step API generation needs."""

    backend = "llama.cpp"

    def __init__(self, llm: Any, path: Path, n_gpu_layers: int, n_layers: int | None) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llm
        self.path = path
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.context_length = int(llm.n_ctx())
        self.n_vocab = int(llm.n_vocab())
        self.chat_template: str | None = llm.metadata.get("tokenizer.chat_template") or None
        self.n_gpu_layers = n_gpu_layers
        self._eos: frozenset[int] | None = None
        blocks = n_layers or 0
        if n_gpu_layers <= 0:
            self.device = "cpu"
            self.placement_text = "all layers on the CPU"
        else:
            on_gpu = min(n_gpu_layers, blocks) if blocks else n_gpu_layers
            self.device = "cuda:0" if blocks and n_gpu_layers > blocks else "cuda:0+cpu"
            self.placement_text = f"{on_gpu} of {blocks or '?'} layers on the GPU"

    def token_text(self, token: int) -> str:
        raw = self._llama_cpp.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def special_prefix(self) -> list[int]:
        if self._llama_cpp.llama_vocab_get_add_bos(self._vocab):
            return [int(self._llama_cpp.llama_vocab_bos(self._vocab))]
        return []

    def encode(self, text: str) -> list[int]:
        """Plain text, special-token names taken literally, without BOS."""
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=False,
                                                  special=False)]

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        assert self.chat_template is not None
        bos = self.special_prefix()
        bos_text = self.token_text(bos[0]) if bos else ""
        eos_text = self.token_text(int(self._llama_cpp.llama_vocab_eos(self._vocab)))
        text = render_chat_template(self.chat_template, messages, bos_token=bos_text,
                                    eos_token=eos_text)
        # A template that writes the BOS token itself must not get a second one.
        add_bos = bool(bos) and not (bos_text and text.startswith(bos_text))
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos,
                                                  special=True)]

    def encode_raw_prompt(self, text: str) -> list[int]:
        """A prompt the user formatted: special tokens in it are parsed, BOS as the model says."""
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=True,
                                                  special=True)]

    def eos_ids(self) -> frozenset[int]:
        """Every end-of-generation token (EOS, EOT, <|im_end|> ...), as llama.cpp marks them."""
        if self._eos is None:
            is_eog = self._llama_cpp.llama_vocab_is_eog
            self._eos = frozenset(t for t in range(self.n_vocab) if is_eog(self._vocab, t))
        return self._eos

    def text_stream(self) -> Utf8Stream:
        return Utf8Stream(lambda token: self.llm.detokenize([token]))

    def _last_logits(self) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float32)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return self._last_logits()

    def step(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last_logits()

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` (a fresh context; needs logits for all positions)."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def cuda_devices(self) -> tuple[int, ...]:
        return ()

    def close(self) -> None:
        self.llm.close()


def load_llama_cpp_model(path: Path, *, n_gpu_layers: int, context_tokens: int,
                         n_layers: int | None, logits_for_all_positions: bool = False,
                         seed: int = 0) -> LlamaCppModel:
    """Load a GGUF in llama.cpp with an explicit GPU layer count and context size."""
    if n_gpu_layers > 0 and not gpu_offload_supported():
        n_gpu_layers = 0  # a CPU-only build; the caller reports the placement it got
    batch = min(context_tokens, 512)
    llm = open_llama(path, n_gpu_layers=n_gpu_layers, n_ctx=context_tokens, n_batch=batch,
                     n_ubatch=batch, logits_all=logits_for_all_positions, seed=seed)
    return LlamaCppModel(llm, path, n_gpu_layers, n_layers)


def llama_cpp_tokenizer(path: Path) -> LlamaCppModel:
    """The vocabulary alone (loads in a fraction of a second, no weights)."""
    llm = open_llama(path, vocab_only=True)
    return LlamaCppModel(llm, path, 0, None)
