"""Doctor checks of Hugging Face folders against the installed transformers and bitsandbytes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from app.core.errors import OptionFact
from app.core.formats.model_info import ModelInfo
from app.core.generate.backends.hf import build_meta_model
from app.core.generate.findings import Finding, name_list

# Quantization methods and the package each needs besides transformers.
QUANT_PACKAGES = {"bitsandbytes": "bitsandbytes", "gptq": "gptqmodel", "awq": "awq",
                  "aqlm": "aqlm", "quanto": "optimum.quanto", "eetq": "eetq", "hqq": "hqq",
                  "compressed-tensors": "compressed_tensors", "torchao": "torchao"}
WILDCARD = re.compile(r"\\\*")


def _version(text: str) -> Any:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        return None


def version_findings(config: dict[str, Any]) -> list[Finding]:
    import transformers

    declared = config.get("transformers_version")
    installed = transformers.__version__
    if not isinstance(declared, str) or _version(declared) is None:
        return []
    saved, have = _version(declared), _version(installed)
    if saved > have:
        return [Finding("warning", f"saved with transformers {declared}, newer than the "
                                   f"installed {installed}",
                        f"if loading fails, upgrade: pip install 'transformers>={declared}'",
                        "newer-transformers")]
    if saved.major < have.major:
        return [Finding("info", f"saved with transformers {declared}; the installed {installed} "
                                "is a major version newer (built-in architectures load, a "
                                "model's own code may not)", None, "older-transformers")]
    return []


def architecture_findings(info: ModelInfo) -> tuple[list[Finding], bool]:
    """Is the model class in the installed transformers? Returns findings and whether it is."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    config = info.metadata
    declared = config.get("transformers_version")
    installed = transformers.__version__
    classes = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = config.get("model_type")
    missing_class = [c for c in classes if not hasattr(transformers, c)]
    type_known = isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES
    if not missing_class and (type_known or not model_type):
        return [], True
    auto_map = config.get("auto_map")
    what = (f"class {missing_class[0]}" if missing_class else "") + (
        f" (model_type {model_type!r})" if model_type else "")
    if isinstance(auto_map, dict):
        code = sorted(p.name for p in info.path.glob("*.py"))
        return [Finding("warning", f"transformers {installed} has no {what.strip()}; the folder "
                                   f"ships its own code ({', '.join(code) or 'named in auto_map'})",
                        "allow remote code for this model only if you trust its source",
                        "remote-code", option=OptionFact("trust_remote_code", True))], False
    saved = _version(declared) if isinstance(declared, str) else None
    if saved is not None and saved > _version(installed):
        action = f"install a transformers that has it: pip install 'transformers>={declared}'"
    elif saved is not None:
        action = (f"it was removed or renamed after transformers {declared}, which saved the "
                  f"checkpoint: run it with transformers=={declared} in a separate environment")
    else:
        action = "upgrade transformers (pip install -U transformers)"
    return [Finding("error", f"transformers {installed} has no {what.strip()}", action,
                    "unknown-class")], False


def quantization_findings(config: dict[str, Any], device: str) -> list[Finding]:
    import importlib.util

    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return []
    method = str(quant.get("quant_method") or "")
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    known = {m.split("_")[0] for m in AUTO_QUANTIZER_MAPPING} | set(AUTO_QUANTIZER_MAPPING)
    if method not in known:
        return [Finding("error", f"quantization method {method!r} is unknown to the installed "
                                 "transformers", "upgrade transformers, or use an unquantized "
                                                 "version of the model", "unknown-quantization")]
    package = QUANT_PACKAGES.get(method)
    if package and importlib.util.find_spec(package.split(".")[0]) is None:
        return [Finding("error", f"the model is quantized with {method}, which needs the "
                                 f"{package} package", f"pip install {package.split('.')[0]}",
                        "quantization-package-missing")]
    if method == "bitsandbytes":
        bits = 8 if quant.get("load_in_8bit") else 4
        problem = probe_bitsandbytes(device, bits)
        if problem:
            import bitsandbytes

            return [Finding("error", f"bitsandbytes {bitsandbytes.__version__} cannot run "
                                     f"{bits}-bit weights on {device}: {problem}",
                            "install a bitsandbytes build for this device (pip install -U "
                            "bitsandbytes), or dequantize the checkpoint with Modelyard",
                            "bitsandbytes-no-kernel")]
    return []


def probe_bitsandbytes(device: str, bits: int) -> str | None:
    """Run a tiny bitsandbytes matmul on `device`; the error text if it has no kernel there."""
    import torch

    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as bnb_functional

        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        weight = torch.randn(64, 64, dtype=dtype, device=device)
        inputs = torch.randn(2, 64, dtype=dtype, device=device)
        if bits == 4:
            packed, state = bnb_functional.quantize_4bit(weight, quant_type="nf4")
            bnb.matmul_4bit(inputs, packed.t(), quant_state=state)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False, bias=False)
            layer.to(device)(inputs)
    except Exception as exc:  # noqa: BLE001 - whatever fails here is the finding
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


def checkpoint_parameters(info: ModelInfo) -> dict[str, int]:
    """Checkpoint tensor names with their logical parameter counts, without quant state."""
    return {t.name: t.n_params for t in info.tensors if t.n_params > 0}


def compare_with_architecture(model: Any, checkpoint: dict[str, int]) -> tuple[list[str],
                                                                               list[str]]:
    """(missing, unused): what the meta model needs that the checkpoint lacks, and what the
    checkpoint has that no parameter takes — through transformers' own key renaming."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import (
        WeightConverter,
        WeightRenaming,
        rename_source_key,
    )

    expected = model.state_dict()
    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    received: dict[str, list[tuple[str, str | None, int]]] = {}
    unused: list[str] = []
    prefix = model.base_model_prefix
    for key, n_params in checkpoint.items():
        target, pattern = rename_source_key(key, renamings, converters, prefix, expected)
        if target not in expected and key in expected:
            target, pattern = rename_source_key(key, [], [], prefix, expected)
        if target in expected:
            received.setdefault(target, []).append((key, pattern, n_params))
        else:
            unused.append(key)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None)
                                       or ())]
    missing = [k for k in expected if k not in received and k not in tied
               and not any(r.search(k) for r in ignore)]
    for target, sources in received.items():
        missing += _missing_sources(sources, expected[target].numel())
    return missing, unused


def _missing_sources(sources: list[tuple[str, str | None, int]], wanted: int) -> list[str]:
    """Checkpoint names absent from a group that transformers stacks (one tensor per expert)."""
    got = sum(n for _, _, n in sources)
    if got >= wanted or not sources or any(p is None or "*" not in p for _, p, _ in sources):
        return []
    by_pattern: dict[str, dict[int, str]] = {}
    for key, pattern, _ in sources:
        regex = re.compile(WILDCARD.sub(r"(\\d+)", re.escape(str(pattern))))
        match = regex.search(key)
        if match:
            by_pattern.setdefault(str(pattern), {})[int(match.group(1))] = key
    per_source = sources[0][2]
    n_patterns = len({p for _, p, _ in sources})
    if per_source <= 0 or wanted % (per_source * n_patterns):
        return [f"{sources[0][0]} (and others: {got} of {wanted} values present)"]
    count = wanted // (per_source * n_patterns)
    missing: list[str] = []
    for pattern, present in by_pattern.items():
        example = next(iter(present.values()))
        where = re.compile(WILDCARD.sub(r"(\\d+)", re.escape(pattern))).search(example)
        assert where is not None  # `example` was matched by this pattern above
        missing += [example[:where.start(1)] + str(index) + example[where.end(1):]
                    for index in range(count) if index not in present]
    return missing


def tensor_findings(info: ModelInfo, trust_remote_code: bool) -> list[Finding]:
    from transformers import AutoConfig

    quant = info.metadata.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method not in (None, "bitsandbytes"):
        return [Finding("info", f"tensor names of {method} checkpoints differ from the "
                                "architecture's, so missing tensors were not checked", None,
                        "tensor-check-skipped")]
    try:
        config = AutoConfig.from_pretrained(info.path, trust_remote_code=trust_remote_code)
        model = build_meta_model(config, trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - the check cannot run; loading will say why
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return [Finding("warning", f"the architecture could not be built to check the tensors "
                                   f"({type(exc).__name__}: {text})", None,
                        "tensor-check-skipped")]
    missing, unused = compare_with_architecture(model, checkpoint_parameters(info))
    findings = []
    if missing:
        findings.append(Finding(
            "error", f"{len(missing)} tensor(s) that {type(model).__name__} needs are not in "
                     f"the checkpoint: {name_list(missing)}; loading would fill them with "
                     "random values and the model would produce garbage",
            "rebuild the checkpoint from its source; a merge or conversion dropped them",
            "missing-tensors", tuple(sorted(missing))))
    if unused:
        findings.append(Finding(
            "warning", f"{len(unused)} tensor(s) in the checkpoint are not used by "
                       f"{type(model).__name__}: {name_list(unused)}",
            "check that config.json names the right architecture", "unused-tensors",
            tuple(sorted(unused))))
    return findings


def remote_code_findings(folder: Path) -> list[Finding]:
    from app.core.generate.remote_code import check_remote_code

    issues = check_remote_code(folder)
    if not issues:
        return []
    return [Finding("warning", f"the model's own code does not match the installed "
                               f"transformers: {issue}",
                    "use the transformers version the model's code was written for, or an "
                    "updated version of the code", "remote-code-incompatible")
            for issue in issues]


def diagnose_hf(info: ModelInfo, *, trust_remote_code: bool, device: str) -> list[Finding]:
    config = info.metadata
    if not config:
        return []  # no config.json: the scan's problem already says so
    findings = version_findings(config)
    class_findings, class_available = architecture_findings(info)
    findings += class_findings
    if isinstance(config.get("auto_map"), dict):
        findings += remote_code_findings(info.path)
    findings += quantization_findings(config, device)
    if class_available or trust_remote_code:
        findings += tensor_findings(info, trust_remote_code)
    else:
        findings.append(Finding("info", "missing tensors were not checked: the architecture "
                                        "is not available", None, "tensor-check-skipped"))
    return findings
