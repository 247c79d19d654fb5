"""Doctor checks of GGUF files: architecture support in llama.cpp and transformers, tensors."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from app.core.errors import OptionFact
from app.core.formats.model_info import ModelInfo
from app.core.generate.findings import Finding, name_list

BLOCK_TENSOR = re.compile(r"^blk\.(?P<index>\d+)\.(?P<kind>.+)$")
# The output head is optional in GGUF: llama.cpp falls back to the token embedding.
OPTIONAL_GGUF = frozenset({"output.weight"})
# llama.cpp's names differ from transformers' model types for a few architectures.
GGUF_TO_MODEL_TYPE = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss",
                      "minimax-m2": "minimax_m2"}


def runtime_findings(info: ModelInfo) -> list[Finding]:
    from app.core.generate.backends.llama_cpp import (
        INSTALL_HINT,
        llama_cpp_available,
        llama_cpp_version,
        unknown_architecture,
    )
    from app.core.generate.loader import transformers_gguf_architectures

    arch = info.architecture or "?"
    in_transformers = arch in transformers_gguf_architectures()
    findings: list[Finding] = []
    if llama_cpp_available():
        unknown = unknown_architecture(info.path)
        if unknown is not None:
            fallback = (" or run it in transformers, which reads this architecture"
                        if in_transformers else "")
            findings.append(Finding(
                "error", f"the llama.cpp in llama-cpp-python {llama_cpp_version()} does not "
                         f"know the architecture {unknown!r}",
                f"upgrade llama-cpp-python (pip install -U llama-cpp-python){fallback}",
                "unknown-gguf-architecture",
                option=OptionFact("backend", "transformers") if in_transformers else None))
    elif in_transformers:
        findings.append(Finding(
            "info", "llama-cpp-python is not installed: transformers will read this GGUF "
                    "(dequantized to float, slower and larger in memory)", INSTALL_HINT,
            "no-llama-cpp"))
    else:
        findings.append(Finding(
            "error", f"llama-cpp-python is not installed and transformers cannot read GGUF "
                     f"files of architecture {arch!r}", INSTALL_HINT, "no-gguf-runtime"))
    return findings


def block_consistency_missing(info: ModelInfo) -> list[str]:
    """A tensor kind most blocks have but some lack was dropped (a merge that lost tensors)."""
    kinds_by_block: dict[int, set[str]] = {}
    for tensor in info.tensors:
        match = BLOCK_TENSOR.match(tensor.name)
        if match:
            kinds_by_block.setdefault(int(match["index"]), set()).add(match["kind"])
    n_blocks = info.n_layers or (max(kinds_by_block) + 1 if kinds_by_block else 0)
    counts = Counter(kind for kinds in kinds_by_block.values() for kind in kinds)
    missing = []
    for kind, count in counts.items():
        if count * 2 <= n_blocks:
            continue  # a kind only some blocks have by design (interleaved MoE, SWA...)
        missing += [f"blk.{i}.{kind}" for i in range(n_blocks)
                    if kind not in kinds_by_block.get(i, set())]
    return missing


def _config_from_header(info: ModelInfo) -> Any:
    """A transformers config from the GGUF header, as transformers' GGUF loader maps it."""
    from transformers import CONFIG_MAPPING
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    arch = info.architecture or ""
    mapping: dict[str, Any] = (GGUF_CONFIG_MAPPING.get(arch.replace("-", "_"))  # type: ignore[assignment]
                               or GGUF_CONFIG_MAPPING.get(arch))
    if not mapping:
        return None
    values: dict[str, Any] = {}
    for key, target in mapping.items():
        value = info.metadata.get(f"{arch}.{key}")
        if target and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[target] = value
    embedding = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
    if embedding is not None and len(embedding.shape) == 2:
        values.setdefault("vocab_size", embedding.shape[1])
    values["tie_word_embeddings"] = not any(t.name == "output.weight" for t in info.tensors)
    model_type = GGUF_TO_MODEL_TYPE.get(arch, arch)
    if model_type not in CONFIG_MAPPING:
        return None
    return CONFIG_MAPPING[model_type](**values)


def expected_tensors_missing(info: ModelInfo) -> tuple[list[str], Finding | None]:
    """Tensors the architecture defines (a meta-device model mapped to GGUF names) but the
    file lacks. Only for architectures transformers can describe; others get a note."""
    import gguf

    from app.core.generate.backends.hf import build_meta_model

    arch_ids = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    arch = info.architecture or ""
    try:
        config = _config_from_header(info) if arch in arch_ids else None
        model = build_meta_model(config) if config is not None else None
    except Exception as exc:  # noqa: BLE001 - transformers cannot describe it: say so, go on
        return [], Finding("info", f"the expected tensors of {arch!r} could not be derived "
                                   f"({type(exc).__name__}: {exc})", None,
                           "tensor-check-skipped")
    if model is None:
        return [], Finding("info", f"transformers cannot describe the architecture {arch!r}, "
                                   "so only block-to-block consistency of the tensors was "
                                   "checked", None, "tensor-check-skipped")
    n_blocks = int(getattr(config, "num_hidden_layers", 0) or info.n_layers or 0)
    names = gguf.get_tensor_name_map(arch_ids[arch], n_blocks)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    expected = set()
    for key in model.state_dict():
        if key in tied:
            continue
        mapped = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if mapped is not None and mapped not in OPTIONAL_GGUF:
            expected.add(mapped)
    present = {t.name for t in info.tensors}
    return sorted(expected - present), None


def diagnose_gguf(info: ModelInfo) -> list[Finding]:
    findings = runtime_findings(info)
    derived, note = expected_tensors_missing(info)
    if note is not None:
        findings.append(note)
    missing = sorted(set(derived) | set(block_consistency_missing(info)))
    if missing:
        findings.append(Finding(
            "error", f"{len(missing)} tensor(s) that {info.architecture!r} needs are not in "
                     f"the file: {name_list(missing)}",
            "rebuild the file from its source; a merge or conversion dropped them",
            "missing-tensors", tuple(missing)))
    return findings
