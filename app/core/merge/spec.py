"""A merge as a form holds it (models with scalar weights and densities, one method) and the
mergekit YAML it stands for, both ways: the GUI edits a `MergeSpec`, runs and exports its YAML,
and fills itself from an imported config when the config is that simple."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from app.core.merge.config import DTYPES, GTA_METHODS, NEEDS_BASE, MergeConfig

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class SpecModel:
    path: Path
    weight: float = 1.0
    density: float = 1.0


@dataclass(frozen=True)
class MergeSpec:
    method: str
    models: tuple[SpecModel, ...]
    base: Path | None = None
    t: float = 0.5
    normalize: bool | None = None  # None: the method's default
    dtype: str | None = None  # F32/F16/BF16; None: the base model's
    seed: int = 0
    union_vocabulary: bool = False  # tokenizer_source: union (else the base's tokenizer)

    def to_yaml(self) -> str:
        """The mergekit YAML of this form, in a stable order (a pure function of the form)."""
        method = self.method
        doc: dict[str, object] = {"merge_method": method}
        if self.base is not None and method in NEEDS_BASE:
            doc["base_model"] = str(self.base)
        models = []
        for model in self.models:
            entry: dict[str, object] = {"model": str(model.path)}
            is_base = self.base is not None and model.path == self.base and method in NEEDS_BASE
            params: dict[str, object] = {}
            if method == "linear" or (method in GTA_METHODS and not is_base):
                params["weight"] = model.weight
            if method in ("ties", "dare_ties", "dare_linear") and not is_base:
                params["density"] = model.density
            if params:
                entry["parameters"] = params
            models.append(entry)
        doc["models"] = models
        shared: dict[str, object] = {}
        if method == "slerp":
            shared["t"] = self.t
        if self.normalize is not None and method in ("linear", *GTA_METHODS):
            shared["normalize"] = self.normalize
        if shared:
            doc["parameters"] = shared
        if self.dtype is not None:
            doc["dtype"] = DTYPE_NAMES[self.dtype]
        if method.startswith("dare"):
            doc["seed"] = self.seed
        if self.union_vocabulary:
            doc["tokenizer_source"] = "union"
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def spec_from_config(config: MergeConfig) -> MergeSpec | None:
    """The form for an imported config, or None when the form cannot show it (slices, LoRA,
    per-layer gradients, filtered values): the YAML is then run as written."""
    if not config.uses_models_form or len(config.slices) != 1:
        return None
    if config.merge_method == "passthrough" or config.tokenizer_source is not None:
        return None
    scalars = {"weight", "density"}
    models = []
    for source in config.slices[0].sources:
        if source.model.adapter is not None:
            return None
        values: dict[str, float] = {}
        for key, setting in source.parameters.items():
            number = setting.value
            if key not in scalars or isinstance(number, bool) or \
                    not isinstance(number, (int, float)):
                return None
            values[key] = float(number)
        models.append(SpecModel(source.model.path, values.get("weight", 1.0),
                                values.get("density", 1.0)))
    shared = config.parameters
    if set(shared) - {"t", "normalize"}:
        return None
    t = shared["t"].value if "t" in shared else 0.5
    normalize = shared["normalize"].value if "normalize" in shared else None
    if not isinstance(t, (int, float)) or isinstance(t, bool) or \
            (normalize is not None and not isinstance(normalize, bool)):
        return None
    base = config.base_model.path if config.base_model else None
    dtype = config.dtype if config.dtype in DTYPES.values() else None
    return MergeSpec(config.merge_method, tuple(models), base, float(t), normalize, dtype,
                     config.seed, config.tokenizer_union)
