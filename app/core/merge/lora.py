"""PEFT LoRA adapters merged into their base as its weights are read: W + scale·B·A.

`scale` is lora_alpha / r, or lora_alpha / √r with `use_rslora`; `rank_pattern` and
`alpha_pattern` give some modules their own r and alpha (matched as PEFT matches them, a
pattern against the end of the module's dotted name). DoRA adapters (`use_dora`) also hold a
magnitude per output row: W' = m · (W + scale·B·A) / ‖W + scale·B·A‖, the norm over the input
dimension, as PEFT merges them. Modules saved whole (`modules_to_save`) replace the base's.
The adapter must fit its base: every module it changes must exist there with the shape B·A
has, or the merge is refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import BadInputError, FormatError, UnsupportedError
from app.core.formats.safetensors_header import read_safetensors_header

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")
_EMBED_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_embedding_A|lora_embedding_B)$")
_MAGNITUDE_KEY = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.weight)?$")


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rule: the first pattern that matches the end of the module's dotted name."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


@dataclass
class LoraModule:
    module: str
    a: str  # tensor names in the adapter file
    b: str
    scale: float
    embedding: bool = False
    magnitude: str | None = None  # DoRA's magnitude vector, in the adapter file


@dataclass
class LoraAdapter:
    path: Path
    weights: Path
    modules: dict[str, LoraModule] = field(default_factory=dict)  # base tensor name → module
    saved: dict[str, str] = field(default_factory=dict)  # base tensor → its whole replacement
    _tensors: dict[str, Any] = field(default_factory=dict)

    def changes(self, tensor_name: str) -> bool:
        return tensor_name in self.modules or tensor_name in self.saved

    def _read(self, name: str, device: torch.device) -> torch.Tensor:
        import torch

        from app.core.merge.sources import FLOAT_DTYPES

        entry = self._tensors[name]
        with open(self.weights, "rb") as handle:
            handle.seek(entry.begin)
            data = handle.read(entry.n_bytes)
        if len(data) != entry.n_bytes:
            raise FormatError("tensor data is truncated", path=self.weights, tensor=name)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        values = raw.view(getattr(torch, FLOAT_DTYPES[entry.dtype])).reshape(entry.shape)
        return values.to(device).float()

    def delta(self, module: LoraModule, device: torch.device) -> torch.Tensor:
        a = self._read(module.a, device)
        b = self._read(module.b, device)
        update = b @ a
        if module.embedding:
            update = update.T
        return update * module.scale

    def apply(self, tensor_name: str, values: torch.Tensor) -> torch.Tensor:
        """The base tensor `values` (float32) as the adapter leaves it."""
        import torch

        if tensor_name in self.saved:
            return self._read(self.saved[tensor_name], values.device)
        module = self.modules.get(tensor_name)
        if module is None:
            return values
        merged = values + self.delta(module, values.device)
        if module.magnitude is None:
            return merged
        magnitude = self._read(module.magnitude, values.device)
        # An embedding's rows are tokens: PEFT's DoRA normalises its columns (its output
        # features are the embedding dimension).
        dim = 0 if module.embedding else 1
        norm = torch.linalg.vector_norm(merged, dim=dim, keepdim=True)
        return merged * (magnitude.reshape(norm.shape) / norm)


def _load_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"is not a PEFT adapter: {ADAPTER_CONFIG} is missing",
                            path=folder) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"unreadable adapter configuration ({exc})", path=path) from None
    if not isinstance(config, dict):
        raise FormatError("is not a JSON object", path=path)
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedError(f"{peft_type} adapters cannot be merged, only LoRA", path=path)
    if config.get("fan_in_fan_out"):
        raise UnsupportedError("fan_in_fan_out adapters (GPT-2 Conv1D) cannot be merged yet",
                               path=path)
    return config


def open_adapter(folder: Path, base: Any) -> LoraAdapter:
    """Read an adapter's config and header and match every module to a weight of `base`
    (a ModelSource); refuse an adapter that does not fit it."""
    config = _load_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise BadInputError(f"{ADAPTER_WEIGHTS} is missing (pickle adapters are never opened)",
                            path=folder)
    header = read_safetensors_header(weights)
    tensors = header.by_name()
    adapter = LoraAdapter(folder, weights, _tensors=tensors)
    pairs: dict[str, dict[str, str]] = {}
    embedding: set[str] = set()
    magnitudes: dict[str, str] = {}
    saved_modules = config.get("modules_to_save") or []
    for name in tensors:
        short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
        magnitude = _MAGNITUDE_KEY.match(short)
        if magnitude is not None:
            magnitudes[magnitude["module"]] = name
            continue
        module_name = short.rpartition(".")[0]
        if any(re.match(rf"(.*\.)?{re.escape(saved)}$", module_name)
               for saved in saved_modules) and short in base.tensors:
            if tuple(base.tensors[short].shape) != tensors[name].shape:
                raise BadInputError(f"the adapter's saved {short} has shape "
                                    f"{list(tensors[name].shape)}, its base "
                                    f"{list(base.tensors[short].shape)} (a resized vocabulary?)",
                                    path=folder, hint="merge the adapter into the model it "
                                                      "was trained on")
            adapter.saved[short] = name
            continue
        match = _LORA_KEY.match(short) or _EMBED_KEY.match(short)
        if match is None and short.endswith(".base_layer.weight"):
            # PEFT saves the frozen embedding beside embedding LoRAs; it is the base's own
            # unless the vocabulary was resized, which this merge cannot follow.
            target = short.replace(".base_layer.weight", ".weight")
            stored = base.tensors.get(target)
            if stored is None or tuple(stored.shape) != tensors[name].shape:
                raise BadInputError(f"the adapter changes {target} (a resized vocabulary?); "
                                    f"it does not fit its base {base.path}", path=folder)
            continue
        if match is None:
            raise UnsupportedError("the adapter holds a tensor that is neither a LoRA matrix "
                                   "nor a module it saves (trainable tokens cannot be merged "
                                   "yet)", path=weights, tensor=name)
        kind = match["kind"]
        if kind.startswith("lora_embedding"):
            embedding.add(match["module"])
        pairs.setdefault(match["module"], {})[kind[-1]] = name
    r0, alpha0 = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    offenders = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise FormatError(f"module {module} has lora_{next(iter(pair))} without its pair",
                              path=weights)
        target = f"{module}.weight"
        a_entry, b_entry = tensors[pair["A"]], tensors[pair["B"]]
        is_embedding = module in embedding
        rank = a_entry.shape[0] if not is_embedding else a_entry.shape[0]
        expected = (b_entry.shape[0], a_entry.shape[1])
        if is_embedding:
            expected = (a_entry.shape[1], b_entry.shape[0])
        stored = base.tensors.get(target)
        if stored is None:
            offenders.append(f"{target} (not in the base)")
            continue
        if tuple(stored.shape) != expected:
            offenders.append(f"{target} (base {list(stored.shape)}, adapter {list(expected)})")
            continue
        r = pattern_value(rank_pattern, module, r0)
        alpha = pattern_value(alpha_pattern, module, alpha0)
        if int(r) != rank:
            raise FormatError(f"module {module} has rank {rank} but the config says {r}",
                              path=folder)
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        magnitude = magnitudes.pop(module, None)
        if config.get("use_dora") and magnitude is None:
            raise FormatError(f"DoRA module {module} has no lora_magnitude_vector",
                              path=weights)
        if magnitude is not None and tensors[magnitude].shape != (expected[1] if is_embedding
                                                                  else expected[0],):
            raise FormatError(f"module {module}'s magnitude vector has shape "
                              f"{list(tensors[magnitude].shape)}", path=weights)
        adapter.modules[target] = LoraModule(module, pair["A"], pair["B"], float(scale),
                                             is_embedding, magnitude)
    if magnitudes:
        raise FormatError(f"magnitude vector {next(iter(magnitudes.values()))} has no LoRA "
                          "pair", path=weights)
    if offenders:
        listed = ", ".join(offenders[:8]) + (f" and {len(offenders) - 8} more"
                                             if len(offenders) > 8 else "")
        raise BadInputError(f"the adapter does not fit its base {base.path}: {listed}",
                            path=folder, hint="merge the adapter into the model it was "
                                              "trained on")
    return adapter
