"""mergekit's YAML merge configuration, read with the line of every value kept for messages.

The keys are mergekit's: `models` (or `slices` of `sources` with `layer_range`),
`base_model`, `merge_method`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`; a model
may be written `BASE+ADAPTER` to merge a PEFT LoRA adapter into it first, as mergekit allows.
Modelyard adds `seed` (DARE's random drop). Anything wrong is an `OptionError` naming the file
and the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.core.errors import OptionError

GTA_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
METHODS = ("linear", "slerp", *GTA_METHODS, "passthrough")
# The methods that add deltas to a base model need one; slerp interpolates from it.
NEEDS_BASE = frozenset({"slerp", *GTA_METHODS})
DTYPES = {"float32": "F32", "fp32": "F32", "float": "F32", "float16": "F16", "fp16": "F16",
          "half": "F16", "bfloat16": "BF16", "bf16": "BF16"}
# Parameters whose values must be probabilities of keeping an element.
DENSITY_KEYS = ("density",)
KNOWN_TOP_KEYS = {"models", "slices", "base_model", "merge_method", "parameters", "dtype",
                  "out_dtype", "tokenizer_source", "seed", "name"}


@dataclass(frozen=True)
class ModelRef:
    """A model folder (or GGUF file), optionally with a LoRA adapter merged into it first."""

    path: Path
    adapter: Path | None = None
    text: str = ""  # as written in the config

    @property
    def label(self) -> str:
        return self.text or str(self.path)


@dataclass(frozen=True)
class Setting:
    """One parameter value as written: a scalar, a gradient (list) or filter-keyed values."""

    value: Any
    line: int


@dataclass(frozen=True)
class SliceSource:
    model: ModelRef
    layer_range: tuple[int, int] | None  # None: every layer (the `models:` form)
    parameters: dict[str, Setting]
    line: int


@dataclass(frozen=True)
class OutputSlice:
    sources: tuple[SliceSource, ...]
    base_model: ModelRef | None
    parameters: dict[str, Setting]
    line: int


@dataclass(frozen=True)
class MergeConfig:
    merge_method: str
    slices: tuple[OutputSlice, ...]
    base_model: ModelRef | None
    parameters: dict[str, Setting]
    dtype: str | None  # F32/F16/BF16; None: the base model's dtype
    tokenizer_source: ModelRef | None
    seed: int = 0
    uses_models_form: bool = True  # `models:` (every layer of each) rather than `slices:`
    text: str = ""  # the YAML as given, saved beside the output
    path: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)
    tokenizer_union: bool = False  # `tokenizer_source: union`: every model's tokens

    def all_models(self) -> list[ModelRef]:
        seen: list[ModelRef] = []
        refs = [s.model for sl in self.slices for s in sl.sources]
        refs += [self.base_model] if self.base_model else []
        refs += [sl.base_model for sl in self.slices if sl.base_model]
        refs += [self.tokenizer_source] if self.tokenizer_source else []
        for ref in refs:
            if ref not in seen:
                seen.append(ref)
        return seen


class _Reader:
    """Turns composed YAML nodes into plain values and raises errors that name the line."""

    def __init__(self, path: Path | None, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir

    def fail(self, node: yaml.Node | None, text: str, hint: str | None = None) -> OptionError:
        where = f"line {node.start_mark.line + 1}: " if node is not None else ""
        return OptionError(f"{where}{text}", path=self.path, hint=hint)

    def plain(self, node: yaml.Node) -> Any:
        # A fresh constructor each time: it caches what it built by node.
        return yaml.SafeLoader("").construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of keys to values")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.plain(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: key {key!r} is not a name")
            if key in out:
                raise self.fail(key_node, f"{what}: {key!r} is given twice")
            out[key] = (key_node, value_node)
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, f"{what} must be a non-empty list")
        return list(node.value)

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.plain(node)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a text value, not {value!r}")
        return value.strip()

    def model_ref(self, node: yaml.Node, what: str) -> ModelRef:
        text = self.string(node, what)
        model_text, _, adapter_text = text.partition("+")
        model = self.existing_path(node, model_text, what)
        adapter = self.existing_path(node, adapter_text, f"{what} adapter") if adapter_text \
            else None
        return ModelRef(model, adapter, text)

    def existing_path(self, node: yaml.Node, text: str, what: str) -> Path:
        raw = Path(os.path.expanduser(text))
        candidates = [raw] if raw.is_absolute() else [Path.cwd() / raw, self.base_dir / raw]
        for candidate in candidates:
            if candidate.exists():
                return candidate.absolute()
        raise self.fail(node, f"{what} {text!r} does not exist",
                        hint="give the path of a local model folder (download Hub models "
                             "first)")

    def parameters(self, node: yaml.Node | None, what: str) -> dict[str, Setting]:
        if node is None or (isinstance(node, yaml.ScalarNode) and self.plain(node) is None):
            return {}
        settings: dict[str, Setting] = {}
        for key, (key_node, value_node) in self.mapping(node, what).items():
            value = self.setting_value(value_node, f"{what}.{key}")
            if key in DENSITY_KEYS:
                for number, where in self.numbers(value_node):
                    if not 0 < number <= 1:
                        raise self.fail(where, f"{key} {number} is outside (0, 1]",
                                        hint="density is the fraction of each delta kept")
            settings[key] = Setting(value, key_node.start_mark.line + 1)
        return settings

    def setting_value(self, node: yaml.Node, what: str) -> Any:
        value = self.plain(node)
        if isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list) and value and all(
                isinstance(v, (bool, int, float, str)) for v in value):
            return value
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            for item_node, item in zip(items, value, strict=True):
                unknown = set(item) - {"filter", "value"}
                if "value" not in item or unknown:
                    raise self.fail(item_node, f"{what}: each entry needs `value` and an "
                                               "optional `filter`")
                inner = item["value"]
                if not (isinstance(inner, (bool, int, float, str)) or (
                        isinstance(inner, list) and inner and
                        all(isinstance(v, (bool, int, float, str)) for v in inner))):
                    raise self.fail(item_node, f"{what}: value {inner!r} must be a number or "
                                               "a list of numbers")
            return value
        raise self.fail(node, f"{what}: {value!r} is not a number, a list of numbers or a "
                              "list of filter/value entries")

    def numbers(self, node: yaml.Node) -> list[tuple[float, yaml.Node]]:
        """Every number written under `node`, with its node (for the line)."""
        if isinstance(node, yaml.ScalarNode):
            value = self.plain(node)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return [(float(value), node)]
            return []
        if isinstance(node, yaml.SequenceNode):
            return [n for item in node.value for n in self.numbers(item)]
        if isinstance(node, yaml.MappingNode):
            return [n for k, v in node.value if self.plain(k) == "value"
                    for n in self.numbers(v)]
        return []

    def layer_range(self, node: yaml.Node) -> tuple[int, int]:
        value = self.plain(node)
        if (not isinstance(value, list) or len(value) != 2 or
                not all(isinstance(v, int) and not isinstance(v, bool) for v in value) or
                not 0 <= value[0] < value[1]):
            raise self.fail(node, f"layer_range {value!r} must be [first, end] with "
                                  "0 <= first < end")
        return value[0], value[1]


def parse_config(text: str, path: Path | None = None) -> MergeConfig:
    """Read a mergekit YAML document; refuse anything unusable with the line it is on."""
    base_dir = path.parent if path is not None else Path.cwd()
    reader = _Reader(path, base_dir)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise OptionError(f"{where}not valid YAML ({problem})", path=path) from None
    if root is None:
        raise OptionError("the merge configuration is empty", path=path)
    top = reader.mapping(root, "the configuration")
    lines = {key: key_node.start_mark.line + 1 for key, (key_node, _v) in top.items()}
    unknown = sorted(set(top) - KNOWN_TOP_KEYS)
    if unknown:
        raise reader.fail(top[unknown[0]][0], f"unknown key {unknown[0]!r}",
                          hint=f"known keys: {', '.join(sorted(KNOWN_TOP_KEYS))}")
    if "merge_method" not in top:
        raise reader.fail(root, "merge_method is missing", hint=f"one of {', '.join(METHODS)}")
    method_node = top["merge_method"][1]
    method = reader.string(method_node, "merge_method")
    if method not in METHODS:
        raise reader.fail(method_node, f"merge_method {method!r} is not supported",
                          hint=f"supported: {', '.join(METHODS)}")
    if ("models" in top) == ("slices" in top):
        raise reader.fail(root, "give either `models` or `slices`, not both or neither")
    base_model = reader.model_ref(top["base_model"][1], "base_model") \
        if "base_model" in top else None
    parameters = reader.parameters(top.get("parameters", (None, None))[1], "parameters")

    if "models" in top:
        sources = []
        for item in reader.sequence(top["models"][1], "models"):
            if isinstance(item, yaml.ScalarNode):
                sources.append(SliceSource(reader.model_ref(item, "model"), None, {},
                                           item.start_mark.line + 1))
                continue
            entry = reader.mapping(item, "a models entry")
            if "model" not in entry:
                raise reader.fail(item, "a models entry has no `model`")
            sources.append(SliceSource(
                reader.model_ref(entry["model"][1], "model"), None,
                reader.parameters(entry.get("parameters", (None, None))[1], "parameters"),
                item.start_mark.line + 1))
        if base_model is not None and method in NEEDS_BASE and \
                all(s.model != base_model for s in sources):
            # mergekit adds a base model that is not listed as one more input.
            sources.append(SliceSource(base_model, None, {}, lines["base_model"]))
        slices = (OutputSlice(tuple(sources), None, {}, lines["models"]),)
    else:
        slices = tuple(_read_slice(reader, node, method, base_model)
                       for node in reader.sequence(top["slices"][1], "slices"))

    dtype = None
    if "dtype" in top or "out_dtype" in top:
        node = top.get("out_dtype", top.get("dtype"))[1]
        name = reader.string(node, "dtype").lower()
        if name not in DTYPES:
            raise reader.fail(node, f"dtype {name!r} is not supported",
                              hint="use float32, float16 or bfloat16")
        dtype = DTYPES[name]
    tokenizer_source = None
    union = False
    if "tokenizer_source" in top:
        node = top["tokenizer_source"][1]
        name = reader.string(node, "tokenizer_source")
        union = name == "union"
        if name not in ("base", "union"):
            tokenizer_source = reader.model_ref(node, "tokenizer_source")
    seed = 0
    if "seed" in top:
        seed = reader.plain(top["seed"][1])
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise reader.fail(top["seed"][1], f"seed {seed!r} must be a whole number >= 0")
    config = MergeConfig(method, slices, base_model, parameters, dtype, tokenizer_source, seed,
                         "models" in top, text, path, lines, union)
    _check_method_inputs(config, reader, top)
    return config


def _read_slice(reader: _Reader, node: yaml.Node, method: str,
                base_model: ModelRef | None) -> OutputSlice:
    entry = reader.mapping(node, "a slice")
    if "sources" not in entry:
        raise reader.fail(node, "a slice has no `sources`")
    sources = []
    for item in reader.sequence(entry["sources"][1], "sources"):
        source = reader.mapping(item, "a slice source")
        if "model" not in source or "layer_range" not in source:
            raise reader.fail(item, "a slice source needs `model` and `layer_range`")
        sources.append(SliceSource(
            reader.model_ref(source["model"][1], "model"),
            reader.layer_range(source["layer_range"][1]),
            reader.parameters(source.get("parameters", (None, None))[1], "parameters"),
            item.start_mark.line + 1))
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sources if s.layer_range}
    if len(lengths) > 1:
        raise reader.fail(node, "the sources of a slice must span the same number of layers, "
                                f"not {sorted(lengths)}")
    slice_base = reader.model_ref(entry["base_model"][1], "base_model") \
        if "base_model" in entry else None
    return OutputSlice(tuple(sources), slice_base,
                       reader.parameters(entry.get("parameters", (None, None))[1],
                                         "parameters"),
                       node.start_mark.line + 1)


def _check_method_inputs(config: MergeConfig, reader: _Reader,
                         top: dict[str, tuple[yaml.Node, yaml.Node]]) -> None:
    method = config.merge_method
    where = top["slices"][0] if "slices" in top else top["models"][0]
    for piece in config.slices:
        count = len(piece.sources)
        if method == "passthrough" and count != 1:
            raise reader.fail(where, f"passthrough takes one model per slice, not {count}")
        if method == "slerp" and count != 2:
            raise reader.fail(where, f"slerp merges exactly two models (base at t = 0), "
                                     f"not {count}")
        if method in NEEDS_BASE and (piece.base_model or config.base_model) is None:
            raise reader.fail(where, f"{method} needs a base_model")
        base = piece.base_model or config.base_model
        if base is not None and method in NEEDS_BASE and \
                all(s.model != base for s in piece.sources):
            raise reader.fail(where, f"the base_model {base.label} is not among the sources "
                                     "of a slice")


def read_config(path: str | Path) -> MergeConfig:
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError("merge configuration not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read the merge configuration ({exc})", path=path) from None
    return parse_config(text, path.absolute())
