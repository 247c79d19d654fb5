"""Pick the backend for a model from its format, and load it (or only its tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from app.core.errors import OptionError, OptionFact, UnsafeInputError, UnsupportedError
from app.core.formats.model_info import ModelInfo
from app.core.generate.backends.base import (
    BackendChoiceName,
    BackendName,
    LoadedModel,
    LoadOptions,
    TokenizerView,
)
from app.core.generate.backends.llama_cpp import (
    DEFAULT_TEST_CONTEXT,
    INSTALL_HINT,
    llama_cpp_available,
)


@dataclass(frozen=True)
class BackendChoice:
    name: BackendName
    reason: str  # shown to the user: why this backend runs the model


def transformers_gguf_architectures() -> frozenset[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return frozenset(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general",
                                                                           "tokenizer"))


def choose_backend(info: ModelInfo, requested: BackendChoiceName = "auto") -> BackendChoice:
    """llama.cpp for GGUF when installed, transformers for HF folders and as GGUF fallback."""
    if info.format == "pickle":
        raise UnsafeInputError("the weights are pickle files, which Modelyard never unpickles",
                               path=info.path, hint="use a safetensors version of the model")
    if info.fatal_problems:
        raise UnsupportedError(info.fatal_problems[0].text, path=info.path)
    if info.format == "hf":
        if requested == "llama.cpp":
            raise OptionError("llama.cpp runs GGUF files, and this is a Hugging Face folder",
                              path=info.path, hint="convert it to GGUF first, or run it "
                                                   "in transformers",
                              option=OptionFact("backend", "transformers"))
        return BackendChoice("transformers", "a Hugging Face folder runs in transformers")
    have_llama = llama_cpp_available()
    if requested == "llama.cpp" or (requested == "auto" and have_llama):
        if not have_llama:
            raise UnsupportedError("llama-cpp-python is not installed", path=info.path,
                                   hint=INSTALL_HINT)
        why = "chosen" if requested == "llama.cpp" else "GGUF files run in llama.cpp"
        return BackendChoice("llama.cpp", why)
    if len(info.files) > 1:
        raise UnsupportedError("llama-cpp-python is not installed, and transformers cannot "
                               "read split GGUF files", path=info.path, hint=INSTALL_HINT)
    arch = info.architecture or "?"
    if arch not in transformers_gguf_architectures():
        raise UnsupportedError(
            f"llama-cpp-python is not installed and transformers cannot read GGUF files of "
            f"architecture {arch!r}", path=info.path, hint=INSTALL_HINT)
    why = ("chosen" if requested == "transformers" else
           "llama-cpp-python is not installed, so transformers reads the GGUF (dequantized, "
           "slower)")
    return BackendChoice("transformers", why)


def generation_context_tokens(info: ModelInfo, options: LoadOptions) -> int:
    if options.context_tokens:
        return options.context_tokens
    return min(info.context_length or DEFAULT_TEST_CONTEXT, DEFAULT_TEST_CONTEXT)


def open_model(info: ModelInfo, choice: BackendChoice, options: LoadOptions) -> LoadedModel:
    if choice.name == "llama.cpp":
        from app.core.estimate.verdict import gpu_layers_that_fit
        from app.core.generate.backends.hf import gpu_budgets
        from app.core.generate.backends.llama_cpp import (
            gpu_offload_supported,
            load_llama_cpp_model,
        )

        context = generation_context_tokens(info, options)
        layers = options.n_gpu_layers
        if layers is None and options.use_gpu and gpu_offload_supported():
            # The Fit verdict's own count: the same estimate, margins and placement order.
            layers = gpu_layers_that_fit(
                info, [b.free_bytes for b in gpu_budgets()],
                int(psutil.virtual_memory().available), context, runtime="llama.cpp")
        return load_llama_cpp_model(
            info.path, n_gpu_layers=layers or 0, context_tokens=context,
            n_layers=info.n_layers,
            logits_for_all_positions=options.logits_for_all_positions)
    from app.core.generate.backends.hf import load_transformers_model

    return load_transformers_model(info, options)


def open_tokenizer(info: ModelInfo, choice: BackendChoice, options: LoadOptions) -> TokenizerView:
    """The model's tokenizer alone: cheap, to compare tokenizations before loading weights."""
    if choice.name == "llama.cpp":
        from app.core.generate.backends.llama_cpp import llama_cpp_tokenizer

        return llama_cpp_tokenizer(info.path)
    from app.core.generate.backends.hf import load_tokenizer
    from app.core.generate.backends.hf_model import TokenizerOnly

    return TokenizerOnly(load_tokenizer(info, options.trust_remote_code))
